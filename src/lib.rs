pub mod config;
pub mod domain;
pub mod error;
pub mod store;
pub mod agent;
pub mod state;
pub mod wake;
