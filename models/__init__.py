"""The churn model: training, the registry in the warehouse, scoring with reason codes."""
