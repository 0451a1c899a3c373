-- cranium metadata store, SQLite, version 2: consumer lag of the steps that read Kafka, the latest per
-- (job, step, topic, partition), recorded after each successful run (for `cranium lag` and metrics).
CREATE TABLE consumer_lag (
    job              TEXT    NOT NULL,
    step             TEXT    NOT NULL,
    topic            TEXT    NOT NULL,
    "partition"      INTEGER NOT NULL,
    committed_offset INTEGER NOT NULL,
    end_offset       INTEGER NOT NULL,
    lag              INTEGER NOT NULL,
    run_id           INTEGER REFERENCES runs (id),
    recorded_at      TEXT    NOT NULL,
    PRIMARY KEY (job, step, topic, "partition")
) WITHOUT ROWID;
