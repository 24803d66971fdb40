-- Run once by the postgres image on an empty data directory: MLflow's tracking store is the
-- database `mlflow` (POSTGRES_DB); its users and permissions, and Prefect's state, get their own.
CREATE DATABASE mlflow_auth;
CREATE DATABASE prefect;
