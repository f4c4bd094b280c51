//! Wire protocols of the appliance. Today: binary framing ([`frame`]). The op payloads, the
//! HTTP/1.1 subset for wrk and curl, and docs/PROTOCOL.md come with the server (issue 3).
//! Sans-IO codecs; each connection's codec runs on the core that owns the connection.

pub mod frame;
