//! Wire protocols of the appliance: binary framing ([`frame`]), the HTTP/1.1 subset for wrk
//! and curl ([`http`]), the operations both carry ([`ops`]) and the IM operations ([`im`]); docs/PROTOCOL.md is the
//! reference. Sans-IO codecs; each connection's codec runs on the core that owns it.

pub mod frame;
pub mod http;
pub mod im;
pub mod ops;
