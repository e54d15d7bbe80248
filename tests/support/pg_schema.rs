//! A PostgreSQL schema of its own for one test or benchmark run, dropped with it: the tests and the
//! benchmarks include this file.

use diesel::Connection;
use diesel::connection::SimpleConnection;

/// A schema `{prefix}_{random}` on the server of `admin_url`, dropped (with everything in it) on drop.
pub struct PgSchema {
    pub admin_url: String,
    pub name: String,
}

impl PgSchema {
    /// Creates the schema; panics when the server cannot be reached.
    pub fn create(admin_url: &str, prefix: &str) -> Self {
        let name = format!(
            "{prefix}_{}",
            amocrm_connector::domain::ids::random_token(12).to_lowercase()
        );
        let mut c = diesel::PgConnection::establish(admin_url).expect("PostgreSQL reachable");
        c.batch_execute(&format!("CREATE SCHEMA {name}"))
            .expect("create schema");
        PgSchema {
            admin_url: admin_url.to_owned(),
            name,
        }
    }

    /// The database URL whose connections use this schema.
    pub fn url(&self) -> String {
        let admin = &self.admin_url;
        let sep = if admin.contains('?') { '&' } else { '?' };
        format!("{admin}{sep}options=-csearch_path%3D{}", self.name)
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        if let Ok(mut c) = diesel::PgConnection::establish(&self.admin_url) {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
        }
    }
}
