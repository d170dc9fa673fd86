"""TaskFlow ingest API: accepts tasks over REST and stores them in Postgres."""
