//! amoCRM marketplace connector: connects marketplace sellers to their own amoCRM (Kommo) accounts.

pub mod app;
pub mod cli;
pub mod config;
pub mod demo;
pub mod domain;
pub mod metrics;
pub mod services;
pub mod storage;
pub mod telemetry;
pub mod web;
pub mod workers;
