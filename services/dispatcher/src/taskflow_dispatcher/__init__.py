"""TaskFlow dispatcher: publishes due tasks and dead letters from Postgres to JetStream."""
