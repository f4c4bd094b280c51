//! Wire protocols of the appliance: binary framing ([`frame`]), the HTTP/1.1 subset for wrk
//! and curl ([`http`]), the operations both carry ([`ops`]), the IM operations ([`im`]) and the decoding of both
//! protocols' requests into one form ([`request`]); docs/PROTOCOL.md is the
//! reference. Sans-IO codecs; each connection's codec runs on the core that owns it.

pub mod frame;
pub mod http;
pub mod im;
pub mod ops;
pub mod request;
