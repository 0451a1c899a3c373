-- cranium metadata store, PostgreSQL, version 2: consumer lag of the steps that read Kafka, the latest
-- per (job, step, topic, partition), recorded after each successful run (for `cranium lag` and metrics).
CREATE TABLE consumer_lag (
    job              text        NOT NULL,
    step             text        NOT NULL,
    topic            text        NOT NULL,
    "partition"      integer     NOT NULL,
    committed_offset bigint      NOT NULL,
    end_offset       bigint      NOT NULL,
    lag              bigint      NOT NULL,
    run_id           bigint      REFERENCES runs (id),
    recorded_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job, step, topic, "partition")
);
