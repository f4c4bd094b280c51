//! Wire protocols of the appliance: binary framing ([`frame`]) and the HTTP/1.1 subset for wrk
//! and curl ([`http`]). Op payloads, endpoints and docs/PROTOCOL.md come with the server
//! (issue 3). Sans-IO codecs; each connection's codec runs on the core that owns it.

pub mod frame;
pub mod http;
