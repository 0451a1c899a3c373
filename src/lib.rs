//! cranium: a declarative ETL DAG scheduler for moving Kafka and MySQL data into a Redshift warehouse.
//!
//! A project is a folder with `cranium.yaml` (connections, metadata store, alert channels, defaults),
//! job files under `jobs/` (a DAG of steps with a cron schedule), SQL under `sql/` and Lua scripts. The
//! pure core (config, templates, SQL lineage, schedules, the DAG) does no I/O beyond reading project
//! files; connectors and the engine sit on top.
#![forbid(unsafe_code)]

pub mod alerts;
pub mod check;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod dag;
pub mod db;
pub mod diag;
pub mod diff;
pub mod engine;
pub mod kafka;
pub mod lake;
pub mod lua_runtime;
pub mod project;
pub mod redshift;
pub mod s3;
pub mod schedule;
pub mod secret;
pub mod sql;
pub mod steps;
pub mod store;
pub mod template;
pub mod web;
pub mod yaml;
