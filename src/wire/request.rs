//! Requests as both protocols carry them: a binary frame's op and payload, or an HTTP request's
//! method, path, query and body, decoded into one [`Request`], or refused with the error code
//! the client is answered with ([`Refusal`]). Whether a request needs an authenticated user is
//! decided here too, so that every protocol checks the same things in the same order: the
//! user first, then the request's form (docs/PROTOCOL.md).
//!
//! Sans-IO and allocation-light; runs on the core that owns the connection.

use bytes::Bytes;

use super::http::{self, Method};
use super::im::{
    appinfo_from_hex, decode_group, decode_read_list, decode_send, decode_seq, decode_sync, SendOp,
    OP_ACK_READ, OP_GROUP_ADD, OP_GROUP_CREATE, OP_GROUP_MEMBERS, OP_GROUP_REMOVE, OP_READ_LIST,
    OP_SEND, OP_SYNC, OP_WITHDRAW, SYNC_LIMIT_DEFAULT, SYNC_LIMIT_MAX,
};
use super::ops::{ErrorCode, Refusal, OP_HELLO, OP_OPEN, OP_PING, OP_SHAKE, PING_BYTES_MAX};
use crate::im::{Class, OwnOp, Target};
use crate::token::{AUTH_TOKEN_BYTES, SHAKE_TOKEN_BYTES};

/// One decoded request of either protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// Binary: authenticate the connection with these `AUTH_TOKEN_BYTES` bytes.
    Hello(&'a [u8]),
    /// Binary: echo the payload.
    Ping(Bytes),
    /// HTTP: `GET /healthz`.
    Health,
    /// HTTP: `GET /metrics`.
    Metrics,
    /// An operation of the authenticated user.
    User(UserOp),
}

/// What an authenticated user asks for, the same over both protocols.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserOp {
    Shake,
    /// Open the envelope of this shake token.
    Open([u8; SHAKE_TOKEN_BYTES]),
    Send(SendOp),
    /// An operation on the entry `seq` of the user's own stream.
    Own {
        seq: u64,
        op: OwnOp,
    },
    Sync {
        after: u64,
        limit: u32,
    },
    Group {
        gid: u64,
        op: GroupRequest,
    },
}

/// A group operation; the acting user is the authenticated one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupRequest {
    Create(Vec<u64>),
    Add(Vec<u64>),
    Remove(Vec<u64>),
    /// The member list from this index on.
    Members {
        from: u32,
    },
}

/// A decoded request and whether it needs an authenticated user. When it does, the user is
/// checked before `request`'s refusal, if any, is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded<'a> {
    pub needs_user: bool,
    pub request: Result<Request<'a>, Refusal>,
}

impl<'a> Decoded<'a> {
    fn open(request: Result<Request<'a>, Refusal>) -> Decoded<'a> {
        Decoded {
            needs_user: false,
            request,
        }
    }

    fn user(op: Result<UserOp, Refusal>) -> Decoded<'a> {
        Decoded {
            needs_user: true,
            request: op.map(Request::User),
        }
    }
}

/// Decodes a binary frame's op and payload.
pub fn decode_binary(op: u8, payload: &Bytes) -> Decoded<'_> {
    match op {
        OP_HELLO if payload.len() == AUTH_TOKEN_BYTES => Decoded::open(Ok(Request::Hello(payload))),
        OP_HELLO => Decoded::open(Err(Refusal::malformed(format!(
            "HELLO carries a {AUTH_TOKEN_BYTES}-byte auth token, not {} bytes",
            payload.len()
        )))),
        OP_PING if payload.len() <= PING_BYTES_MAX => {
            Decoded::open(Ok(Request::Ping(payload.clone())))
        }
        OP_PING => Decoded::open(Err(Refusal::new(
            ErrorCode::TooLarge,
            format!("PING payload over {PING_BYTES_MAX} bytes"),
        ))),
        OP_SHAKE if payload.is_empty() => Decoded::user(Ok(UserOp::Shake)),
        OP_SHAKE => Decoded::user(Err(Refusal::malformed("SHAKE has an empty payload"))),
        OP_OPEN => Decoded::user(match <[u8; SHAKE_TOKEN_BYTES]>::try_from(&payload[..]) {
            Ok(token) => Ok(UserOp::Open(token)),
            Err(_) => Err(Refusal::malformed(format!(
                "OPEN carries the {SHAKE_TOKEN_BYTES}-byte token of a shake, not {} bytes",
                payload.len()
            ))),
        }),
        OP_SEND | OP_SYNC | OP_GROUP_CREATE | OP_GROUP_ADD | OP_GROUP_REMOVE | OP_GROUP_MEMBERS
        | OP_ACK_READ | OP_WITHDRAW | OP_READ_LIST => Decoded::user(binary_im(op, payload)),
        op => Decoded::open(Err(Refusal::new(
            ErrorCode::UnknownOp,
            format!("op 0x{op:02x} is not known"),
        ))),
    }
}

fn binary_im(op: u8, p: &[u8]) -> Result<UserOp, Refusal> {
    Ok(match op {
        OP_SEND => UserOp::Send(decode_send(p)?),
        OP_ACK_READ => UserOp::Own {
            seq: decode_seq(p)?,
            op: OwnOp::AckRead,
        },
        OP_WITHDRAW => UserOp::Own {
            seq: decode_seq(p)?,
            op: OwnOp::Withdraw,
        },
        OP_READ_LIST => {
            let (seq, from) = decode_read_list(p)?;
            UserOp::Own {
                seq,
                op: OwnOp::ReadList { from },
            }
        }
        OP_SYNC => {
            let (after, limit) = decode_sync(p)?;
            UserOp::Sync { after, limit }
        }
        _ => {
            let (gid, uids) = decode_group(p, op)?;
            let op = match op {
                OP_GROUP_CREATE => GroupRequest::Create(uids),
                OP_GROUP_ADD => GroupRequest::Add(uids),
                OP_GROUP_REMOVE => GroupRequest::Remove(uids),
                _ => GroupRequest::Members {
                    from: uids.first().map_or(0, |&f| clamp_u32(f)),
                },
            };
            UserOp::Group { gid, op }
        }
    })
}

/// Decodes an HTTP request (docs/PROTOCOL.md, "HTTP").
pub fn decode_http<'a>(req: &http::Request<'a>) -> Decoded<'a> {
    match (req.method, req.path) {
        (Method::Get, "/healthz") => Decoded::open(Ok(Request::Health)),
        (Method::Get, "/metrics") => Decoded::open(Ok(Request::Metrics)),
        (_, "/shake") => Decoded::user(Ok(UserOp::Shake)),
        (Method::Post, "/open") => Decoded::user(http_open(req)),
        (_, path) if path.starts_with("/im/") => Decoded::user(http_im(req)),
        (Method::Get, "/open") => Decoded::open(Err(Refusal::malformed("use POST /open"))),
        (_, path) => Decoded::open(Err(Refusal::new(
            ErrorCode::UnknownOp,
            format!(
                "no endpoint {path}; try /shake, /open, /im/send, /im/sync, /metrics, /healthz"
            ),
        ))),
    }
}

/// `POST /open`: the token in hex as the body, or as `?token=`.
fn http_open(req: &http::Request<'_>) -> Result<UserOp, Refusal> {
    let text = match std::str::from_utf8(req.body) {
        Ok(t) if !t.trim().is_empty() => t.trim(),
        _ => req
            .query
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")))
            .unwrap_or(""),
    };
    let mut token = [0u8; SHAKE_TOKEN_BYTES];
    if text.len() != 2 * SHAKE_TOKEN_BYTES || hex::decode_to_slice(text, &mut token).is_err() {
        return Err(Refusal::malformed(format!(
            "the body must be the {}-hex-digit token of a shake",
            2 * SHAKE_TOKEN_BYTES
        )));
    }
    Ok(UserOp::Open(token))
}

/// The value of the first `name=` in the query string.
fn query<'a>(req: &http::Request<'a>, name: &str) -> Option<&'a str> {
    req.query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then_some(v)
    })
}

fn query_u64(req: &http::Request<'_>, name: &str) -> Result<Option<u64>, Refusal> {
    query(req, name)
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| Refusal::malformed(format!("{name}={v} is not a number")))
        })
        .transpose()
}

fn clamp_u32(v: u64) -> u32 {
    v.min(u64::from(u32::MAX)) as u32
}

/// A body of uids separated by commas or whitespace.
fn uid_list(body: &[u8]) -> Result<Vec<u64>, Refusal> {
    let text = std::str::from_utf8(body)
        .map_err(|_| Refusal::malformed("the body must be uids, comma-separated"))?;
    text.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<u64>()
                .map_err(|_| Refusal::malformed(format!("{t:?} is not a uid")))
        })
        .collect()
}

/// The IM endpoints (docs/PROTOCOL.md, "IM over HTTP").
fn http_im(req: &http::Request<'_>) -> Result<UserOp, Refusal> {
    match (req.method, req.path) {
        (Method::Post, "/im/send") => http_send(req),
        (method, path @ ("/im/read" | "/im/withdraw" | "/im/reads")) => {
            let seq = query_u64(req, "seq")?.ok_or_else(|| Refusal::malformed("give ?seq="))?;
            let op = match (method, path) {
                (Method::Post, "/im/read") => OwnOp::AckRead,
                (Method::Post, "/im/withdraw") => OwnOp::Withdraw,
                (Method::Get, "/im/reads") => OwnOp::ReadList {
                    from: clamp_u32(query_u64(req, "from")?.unwrap_or(0)),
                },
                _ => {
                    return Err(Refusal::malformed(
                        "POST /im/read, POST /im/withdraw, GET /im/reads",
                    ))
                }
            };
            Ok(UserOp::Own { seq, op })
        }
        (Method::Get, "/im/sync") => {
            let after = query_u64(req, "after")?.unwrap_or(0);
            let limit = match query_u64(req, "limit")?.unwrap_or(0) {
                0 => SYNC_LIMIT_DEFAULT,
                n => clamp_u32(n.min(u64::from(SYNC_LIMIT_MAX))),
            };
            Ok(UserOp::Sync { after, limit })
        }
        (method, path) if path.starts_with("/im/group/") => {
            let gid = query_u64(req, "gid")?.ok_or_else(|| Refusal::malformed("give ?gid="))?;
            let op = match (method, &path["/im/group/".len()..]) {
                (Method::Post, "create") => GroupRequest::Create(uid_list(req.body)?),
                (Method::Post, "add") => GroupRequest::Add(uid_list(req.body)?),
                (Method::Post, "remove") => GroupRequest::Remove(uid_list(req.body)?),
                (Method::Get, "members") => GroupRequest::Members {
                    from: clamp_u32(query_u64(req, "from")?.unwrap_or(0)),
                },
                _ => {
                    return Err(Refusal::new(
                        ErrorCode::UnknownOp,
                        "group endpoints: POST create|add|remove, GET members",
                    ))
                }
            };
            Ok(UserOp::Group { gid, op })
        }
        _ => Err(Refusal::new(
            ErrorCode::UnknownOp,
            "IM endpoints: POST /im/send, GET /im/sync, /im/group/...",
        )),
    }
}

/// `POST /im/send?to=user:UID|group:GID&appinfo=HEX[&class=...]`, the body is the message.
fn http_send(req: &http::Request<'_>) -> Result<UserOp, Refusal> {
    let to = match query(req, "to").and_then(|t| t.split_once(':')) {
        Some(("user", id)) => id.parse().map(Target::User),
        Some(("group", id)) => id.parse().map(Target::Group),
        _ => return Err(Refusal::malformed("give ?to=user:UID or ?to=group:GID")),
    }
    .map_err(|_| Refusal::malformed("the id in ?to= is not a number"))?;
    let appinfo = query(req, "appinfo")
        .and_then(appinfo_from_hex)
        .ok_or_else(|| {
            Refusal::malformed(
                "give ?appinfo= with 1 to 32 hex digits (the 16 bytes of the binary SEND in \
                 order), unique per message",
            )
        })?;
    let class = match query(req, "class").unwrap_or("chat") {
        "chat" => Class::Chat,
        "api" => Class::Api,
        "app" => Class::App,
        "control" => Class::Control,
        _ => return Err(Refusal::malformed("class is chat, api, app or control")),
    };
    Ok(UserOp::Send(SendOp {
        appinfo,
        to,
        class,
        body: req.body.into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(
        method: Method,
        path: &'static str,
        query: Option<&'static str>,
    ) -> http::Request<'static> {
        http::Request {
            method,
            path,
            query,
            auth: None,
            close: false,
            body: b"",
        }
    }

    #[test]
    fn binary_checks_the_user_before_the_form_of_user_ops() {
        let short = Bytes::from_static(b"short");
        let d = decode_binary(OP_OPEN, &short);
        assert!(d.needs_user);
        assert_eq!(d.request.unwrap_err().code, ErrorCode::Malformed);
        let d = decode_binary(OP_HELLO, &short);
        assert!(!d.needs_user);
        let empty = Bytes::new();
        let d = decode_binary(0x7e, &empty);
        assert_eq!(d.request.unwrap_err().code, ErrorCode::UnknownOp);
        assert!(!d.needs_user);
    }

    #[test]
    fn a_send_body_over_the_limit_is_too_large_not_malformed() {
        let mut p = super::super::im::encode_send(1, Target::User(2), Class::Chat, b"");
        p.resize(p.len() + crate::im::BODY_MAX + 1, 0);
        let p = Bytes::from(p);
        let d = decode_binary(OP_SEND, &p);
        assert_eq!(d.request.unwrap_err().code, ErrorCode::TooLarge);
    }

    #[test]
    fn the_same_group_members_page_over_both_protocols() {
        let p = Bytes::from(super::super::im::encode_group(7, &[u64::MAX]));
        let binary = decode_binary(OP_GROUP_MEMBERS, &p).request.unwrap();
        let req = http(
            Method::Get,
            "/im/group/members",
            Some("gid=7&from=99999999999"),
        );
        assert_eq!(decode_http(&req).request.unwrap(), binary);
        assert_eq!(
            binary,
            Request::User(UserOp::Group {
                gid: 7,
                op: GroupRequest::Members { from: u32::MAX }
            })
        );
    }

    #[test]
    fn http_sync_limit_is_clamped_and_zero_means_default() {
        let sync = |q| decode_http(&http(Method::Get, "/im/sync", Some(q))).request;
        assert_eq!(
            sync("limit=5000").unwrap(),
            Request::User(UserOp::Sync {
                after: 0,
                limit: SYNC_LIMIT_MAX
            })
        );
        assert_eq!(
            sync("after=3&limit=0").unwrap(),
            Request::User(UserOp::Sync {
                after: 3,
                limit: SYNC_LIMIT_DEFAULT
            })
        );
        assert_eq!(sync("after=x").unwrap_err().code, ErrorCode::Malformed);
    }

    #[test]
    fn http_routes_that_need_no_user() {
        let d = decode_http(&http(Method::Get, "/open", None));
        assert!(!d.needs_user);
        assert_eq!(d.request.unwrap_err().code, ErrorCode::Malformed);
        let d = decode_http(&http(Method::Post, "/nope", None));
        assert_eq!(d.request.unwrap_err().code, ErrorCode::UnknownOp);
        assert!(decode_http(&http(Method::Post, "/shake", None)).needs_user);
        assert!(decode_http(&http(Method::Get, "/im/nope", None)).needs_user);
    }
}
