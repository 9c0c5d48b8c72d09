-- Runs once, when the PostgreSQL volume is first created: the warehouse beside Prefect's database.
CREATE DATABASE lifecycle OWNER lifecycle;
