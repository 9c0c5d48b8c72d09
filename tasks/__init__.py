"""The pipeline's Prefect tasks: extract, features, score, segment, allocate, dispatch, measure.

Importing this package must stay cheap and Prefect-free; each step module imports Prefect itself.
"""
