//! HTTP: the campaign preview server (and the subscriber pages). The only
//! module that imports axum.

pub mod preview;
