//! IM over loopback (issue 5): single chats and groups with contiguous seqs, idempotent
//! sends, push then pull, offline catch-up, bad input, HTTP, and a kill -9 crash test that
//! checks no acknowledged message is lost or duplicated.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use common::{http, Event};
use hongbao::client::Client;
use hongbao::im::{Class, ImReply, Target};
use hongbao::wire::im::{Entry, ImDecoded, OP_SEND};
use hongbao::wire::ops::{ErrorCode, Reply};
use rand::{Rng, SeedableRng};

fn sent(r: Reply) -> (u64, bool) {
    match r {
        Reply::Im(ImDecoded::Reply(ImReply::Sent { seq, duplicate, .. })) => (seq, duplicate),
        other => panic!("not a send reply: {other:?}"),
    }
}

fn error(r: Reply) -> u16 {
    match r {
        Reply::Error { code, .. } => code,
        other => panic!("not an error: {other:?}"),
    }
}

/// Every entry of the connection's user's stream, paging through.
fn pull_all(c: &mut Client) -> Vec<Entry> {
    let mut all = Vec::new();
    loop {
        let after = all.last().map_or(0, |e: &Entry| e.seq);
        match c.im_sync(after, 0).unwrap() {
            Reply::Im(ImDecoded::Page { entries, max_seq }) => {
                let done = entries.is_empty() || entries.last().unwrap().seq == max_seq;
                all.extend(entries);
                if done {
                    return all;
                }
            }
            other => panic!("not a page: {other:?}"),
        }
    }
}

/// Pulls until the stream holds at least `n` entries (sends are answered once durable in the
/// sender's stream; the recipients' copies follow asynchronously, within milliseconds).
fn pull_until(c: &mut Client, n: usize) -> Vec<Entry> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let all = pull_all(c);
        if all.len() >= n || std::time::Instant::now() > deadline {
            return all;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn assert_contiguous(entries: &[Entry]) {
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1, "seqs are 1, 2, 3, ...");
    }
}

#[test]
fn single_chat_push_then_pull_and_idempotent_retries() {
    let event = Event::new();
    let server = event.serve("data", &["--cores", "2"]);
    let mut bob = server.client(&event.auth(2));
    // Bob syncs first: from then on his connection gets pushes.
    assert!(pull_all(&mut bob).is_empty());
    let mut alice = server.client(&event.auth(1));
    let (seq, dup) = sent(
        alice
            .im_send(7, Target::User(2), Class::Chat, b"hi bob")
            .unwrap(),
    );
    assert_eq!((seq, dup), (1, false));
    let push = bob.wait_push(Duration::from_secs(5)).unwrap();
    assert_eq!(push, Some((2, 1)), "bob is told to pull");
    let got = pull_all(&mut bob);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].sender, got[0].sender_seq), (1, 1));
    assert_eq!(got[0].body, b"hi bob");
    assert_eq!(got[0].to, Target::User(2));
    // A retry with the same appinfo: the original result, nothing stored.
    assert_eq!(
        sent(
            alice
                .im_send(7, Target::User(2), Class::Chat, b"hi bob")
                .unwrap()
        ),
        (1, true)
    );
    // The same appinfo for another message is refused.
    assert_eq!(
        error(
            alice
                .im_send(7, Target::User(2), Class::Chat, b"other")
                .unwrap()
        ),
        ErrorCode::AppinfoReused as u16
    );
    for i in 0..20u128 {
        let body = format!("m{i}");
        sent(
            alice
                .im_send(100 + i, Target::User(2), Class::Chat, body.as_bytes())
                .unwrap(),
        );
    }
    let got = pull_until(&mut bob, 21);
    assert_contiguous(&got);
    assert_eq!(got.len(), 21);
    let bodies: Vec<String> = got[1..]
        .iter()
        .map(|e| String::from_utf8(e.body.clone()).unwrap())
        .collect();
    assert_eq!(bodies, (0..20).map(|i| format!("m{i}")).collect::<Vec<_>>());
    // Alice's own stream holds her sends too (her other devices sync it).
    let mine = pull_all(&mut alice);
    assert_eq!(mine.len(), 21);
    assert!(mine.iter().all(|e| e.sender == 1));
    // 21 stored sends remembered for retries (gauges are published every tick).
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(server.metric("hongbao_im_appinfo_entries"), 21);
    // Each send is kept twice in memory (its SENT record and its DELIVERY record), and the
    // table has no free slots: nothing has left it.
    assert_eq!(server.metric("hongbao_im_kept_messages"), 42);
    assert_eq!(server.metric("hongbao_im_kept_slots"), 42);
}

#[test]
fn group_messages_reach_every_member_once_and_offline_members_catch_up() {
    let event = Event::new();
    let server = event.serve("data", &["--cores", "2"]);
    let owner = 1000u64;
    let members: Vec<u64> = (2000..2300).collect();
    let mut o = server.client(&event.auth(owner));
    match o.group_create(77, &members).unwrap() {
        Reply::Im(ImDecoded::Reply(ImReply::Group {
            gid,
            version,
            members,
        })) => assert_eq!((gid, version, members), (77, 1, 301)),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        error(o.group_create(77, &[]).unwrap()),
        ErrorCode::GroupExists as u16
    );
    // One member watches; the rest are offline.
    let mut online = server.client(&event.auth(2000));
    pull_all(&mut online);
    for i in 0..10u128 {
        sent(
            o.im_send(
                i + 1,
                Target::Group(77),
                Class::Chat,
                format!("g{i}").as_bytes(),
            )
            .unwrap(),
        );
    }
    let push = online.wait_push(Duration::from_secs(5)).unwrap();
    assert!(push.is_some_and(|(uid, _)| uid == 2000));
    for &m in members.iter().step_by(37) {
        let mut c = server.client(&event.auth(m));
        let got = pull_until(&mut c, 10);
        assert_contiguous(&got);
        let bodies: Vec<&[u8]> = got.iter().map(|e| &e.body[..]).collect();
        let want: Vec<String> = (0..10).map(|i| format!("g{i}")).collect();
        assert_eq!(
            bodies,
            want.iter().map(|s| s.as_bytes()).collect::<Vec<_>>(),
            "member {m}"
        );
        assert!(got.iter().all(|e| e.to == Target::Group(77)));
    }
    // Outsiders can neither send nor list; members can list.
    let mut outsider = server.client(&event.auth(5));
    assert_eq!(
        error(
            outsider
                .im_send(1, Target::Group(77), Class::Chat, b"x")
                .unwrap()
        ),
        ErrorCode::NotMember as u16
    );
    assert_eq!(
        error(outsider.group_members(77, 0).unwrap()),
        ErrorCode::NotMember as u16
    );
    match online.group_members(77, 0).unwrap() {
        Reply::Im(ImDecoded::Members { total, members, .. }) => {
            assert_eq!(total, 301);
            assert_eq!(members.len(), 301);
        }
        other => panic!("{other:?}"),
    }
    // A removed member gets no later message; a control message to a small group goes out.
    let mut leaver = server.client(&event.auth(2001));
    assert!(matches!(
        leaver.group_remove(77, &[2001]).unwrap(),
        Reply::Im(ImDecoded::Reply(ImReply::Group { version: 2, .. }))
    ));
    sent(
        o.im_send(99, Target::Group(77), Class::Control, b"typing")
            .unwrap(),
    );
    assert_eq!(pull_until(&mut online, 11).len(), 11);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(pull_until(&mut leaver, 10).len(), 10);
    assert_eq!(
        error(
            o.im_send(100, Target::Group(78), Class::Chat, b"x")
                .unwrap()
        ),
        ErrorCode::NoSuchGroup as u16
    );
}

#[test]
fn read_receipts_and_withdrawals_reach_every_copy() {
    use hongbao::im::{EntryKind, MsgId};
    let event = Event::new();
    let server = event.serve("data", &["--cores", "2"]);
    let mut o = server.client(&event.auth(1));
    let members: Vec<u64> = (2..=9).collect();
    assert!(matches!(
        o.group_create(3, &members).unwrap(),
        Reply::Im(ImDecoded::Reply(ImReply::Group { .. }))
    ));
    let (seq, _) = sent(
        o.im_send(1, Target::Group(3), Class::Chat, b"read me")
            .unwrap(),
    );
    let msg = MsgId { sender: 1, seq };
    // The membership changes after the send: 9 leaves, 10 joins. The message went to 2..=9,
    // so its unread list and its withdrawal are about exactly those.
    let mut nine = server.client(&event.auth(9));
    assert!(matches!(
        nine.group_remove(3, &[9]).unwrap(),
        Reply::Im(ImDecoded::Reply(ImReply::Group { version: 2, .. }))
    ));
    assert!(matches!(
        o.group_add(3, &[10]).unwrap(),
        Reply::Im(ImDecoded::Reply(ImReply::Group { version: 3, .. }))
    ));
    // Members 2..=5 read it (concurrently, from their own connections and cores).
    let readers: Vec<std::thread::JoinHandle<()>> = (2..=5u64)
        .map(|m| {
            let auth = event.auth(m);
            let addr = server.binary;
            std::thread::spawn(move || {
                let mut c = Client::connect(addr).unwrap();
                assert!(matches!(c.hello(&auth).unwrap(), Reply::Hello(_)));
                let got = pull_until(&mut c, 1);
                let entry = got.iter().find(|e| e.sender == 1).expect("the message");
                let (rseq, dup) = sent(c.im_ack_read(entry.seq).unwrap());
                assert!(!dup);
                // A retry is stored once.
                assert_eq!(sent(c.im_ack_read(entry.seq).unwrap()), (rseq, true));
                let mine = pull_all(&mut c);
                let receipt = mine.iter().find(|e| e.seq == rseq).unwrap();
                assert_eq!(receipt.kind, EntryKind::Read);
                assert_eq!(
                    receipt.refer,
                    Some(MsgId {
                        sender: 1,
                        seq: entry.sender_seq
                    })
                );
            })
        })
        .collect();
    for r in readers {
        r.join().unwrap();
    }
    // The sender sees who read it and who has not (receipts reach its stream
    // asynchronously): the readers, then the unread among the recipients at the send.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match o.im_read_list(seq, 0).unwrap() {
            Reply::Im(ImDecoded::Reply(ImReply::Readers {
                read: 4,
                unread,
                from: 0,
                uids,
                ..
            })) => {
                assert_eq!((unread, uids), (4, vec![2, 3, 4, 5, 6, 7, 8, 9]));
                break;
            }
            Reply::Im(ImDecoded::Reply(ImReply::Readers { .. }))
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5))
            }
            other => panic!("read list: {other:?}"),
        }
    }
    // A page from an index.
    assert!(matches!(
        o.im_read_list(seq, 6).unwrap(),
        Reply::Im(ImDecoded::Reply(ImReply::Readers { read: 4, unread: 4, from: 6, uids, .. }))
            if uids == vec![8, 9]
    ));
    let receipts = pull_until(&mut o, 5);
    assert_eq!(
        receipts
            .iter()
            .filter(|e| e.kind == EntryKind::Read && e.refer == Some(msg))
            .count(),
        4
    );
    // Only the sender sees the read list; a member asking about its copy's seq gets refused.
    let mut m6 = server.client(&event.auth(6));
    assert_eq!(
        error(m6.im_read_list(1, 0).unwrap()),
        ErrorCode::NoSuchMessage as u16
    );
    // Withdrawal: a control entry with the message's appinfo and send time in every copy.
    let (wseq, _) = sent(o.im_withdraw(seq).unwrap());
    assert_eq!(sent(o.im_withdraw(seq).unwrap()), (wseq, true));
    for m in members {
        let mut c = server.client(&event.auth(m));
        // The withdrawal follows its answer asynchronously; members 2-5 also hold their
        // receipts, so wait for the withdrawal itself.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let all = loop {
            let all = pull_all(&mut c);
            if all.iter().any(|e| e.kind == EntryKind::Withdraw)
                || std::time::Instant::now() > deadline
            {
                break all;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let original = all.iter().find(|e| e.kind == EntryKind::Message).unwrap();
        let w = all
            .iter()
            .find(|e| e.kind == EntryKind::Withdraw)
            .unwrap_or_else(|| panic!("member {m} has no withdrawal: {all:?}"));
        assert_eq!(w.refer, Some(msg));
        assert_eq!((w.appinfo, w.sent_ms), (original.appinfo, original.sent_ms));
    }
    // The member who joined after the send has neither the message nor its withdrawal.
    let mut ten = server.client(&event.auth(10));
    assert_eq!(pull_all(&mut ten), vec![]);
    // Over HTTP too.
    let a = event.auth_hex(1);
    let (status, body) = http(
        server.http,
        "GET",
        &format!("/im/reads?seq={seq}"),
        Some(&a),
        "",
    );
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["readers"], serde_json::json!([2, 3, 4, 5]));
    assert_eq!(v["unread_uids"], serde_json::json!([6, 7, 8, 9]));
    assert_eq!(
        (v["read"].as_u64(), v["unread"].as_u64()),
        (Some(4), Some(4))
    );
    let (status, body) = http(server.http, "POST", "/im/withdraw?seq=999", Some(&a), "");
    assert_eq!(status, 404, "{body}");
}

#[test]
fn bad_im_requests_are_answered_and_the_connection_goes_on() {
    let event = Event::new();
    let server = event.serve("data", &["--cores", "2"]);
    let mut anon = Client::connect(server.binary).unwrap();
    assert_eq!(
        error(anon.call(OP_SEND, &[0; 40]).unwrap()),
        ErrorCode::Unauthenticated as u16
    );
    let mut c = server.client(&event.auth(3));
    assert_eq!(
        error(c.call(OP_SEND, &[1, 2, 3]).unwrap()),
        ErrorCode::Malformed as u16
    );
    let mut bad_target = hongbao::wire::im::encode_send(1, Target::User(4), Class::Chat, b"x");
    bad_target[16] = 9;
    assert_eq!(
        error(c.call(OP_SEND, &bad_target).unwrap()),
        ErrorCode::Malformed as u16
    );
    let big = vec![b'x'; hongbao::im::BODY_MAX + 1];
    assert_eq!(
        error(c.im_send(2, Target::User(4), Class::Chat, &big).unwrap()),
        ErrorCode::TooLarge as u16
    );
    assert_eq!(
        error(c.call(hongbao::wire::im::OP_SYNC, &[0; 3]).unwrap()),
        ErrorCode::Malformed as u16
    );
    assert_eq!(
        error(c.call(hongbao::wire::im::OP_READ_LIST, &[0; 12]).unwrap()),
        ErrorCode::Malformed as u16
    );
    // Past the end of any stream (u64::MAX): no entries, just max_seq; the server goes on.
    assert_eq!(
        sent(
            c.im_send(1, Target::User(3), Class::Chat, b"to self")
                .unwrap()
        ),
        (1, false)
    );
    match c.im_sync(u64::MAX, 10).unwrap() {
        Reply::Im(ImDecoded::Page { entries, max_seq }) => {
            assert_eq!((entries.len(), max_seq), (0, 1));
        }
        other => panic!("not a page: {other:?}"),
    }
    assert_eq!(
        error(c.group_add(12345, &[1]).unwrap()),
        ErrorCode::NoSuchGroup as u16
    );
    // Still serving.
    assert_eq!(
        sent(c.im_send(3, Target::User(4), Class::Chat, b"ok").unwrap()),
        (2, false)
    );
}

#[test]
fn im_over_http() {
    let event = Event::new();
    let server = event.serve("data", &["--cores", "2"]);
    let a = event.auth_hex(11);
    let b = event.auth_hex(12);
    let (status, body) = http(
        server.http,
        "POST",
        "/im/send?to=user:12&appinfo=abc1",
        Some(&a),
        "hello over http",
    );
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["seq"].as_u64(), v["duplicate"].as_bool()),
        (Some(1), Some(false))
    );
    // The recipient's copy follows the answer within milliseconds.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let v = loop {
        let (status, body) = http(server.http, "GET", "/im/sync?after=0", Some(&b), "");
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        if v["max_seq"] == 1 || std::time::Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(v["max_seq"], 1);
    assert_eq!(v["entries"][0]["body"], "hello over http");
    assert_eq!(v["entries"][0]["sender"], 11);
    let (status, body) = http(
        server.http,
        "POST",
        "/im/group/create?gid=5",
        Some(&a),
        "12, 13",
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = http(server.http, "GET", "/im/group/members?gid=5", Some(&b), "");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["members"], serde_json::json!([11, 12, 13]));
    let (status, body) = http(server.http, "POST", "/im/send?to=group:5", Some(&a), "x");
    assert_eq!(status, 400, "{body}");
    let (status, _) = http(
        server.http,
        "POST",
        "/im/send?to=user:12&appinfo=1",
        None,
        "x",
    );
    assert_eq!(status, 401);
}

/// What the clients saw: every acknowledged send (sender, appinfo) -> (seq, target, body).
type Acked = BTreeMap<(u64, u128), (u64, Target, Vec<u8>)>;

/// Sends messages until the server goes away; records what was acknowledged.
fn sender(
    addr: SocketAddr,
    auth: [u8; 32],
    uid: u64,
    users: &[u64],
    seed: u64,
    appinfo_base: u128,
) -> (Acked, Vec<(u128, Target, Vec<u8>)>) {
    let mut acked = Acked::new();
    let mut unanswered = Vec::new();
    let Ok(mut c) = Client::connect(addr) else {
        return (acked, unanswered);
    };
    if !matches!(c.hello(&auth), Ok(Reply::Hello(_))) {
        return (acked, unanswered);
    }
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed);
    for i in 0.. {
        let appinfo = appinfo_base + i;
        let to = if rng.random_bool(0.3) {
            Target::Group(900)
        } else {
            Target::User(users[rng.random_range(0..users.len())])
        };
        let body = format!("{uid}:{i}").into_bytes();
        match c.im_send(appinfo, to, Class::Chat, &body) {
            Ok(Reply::Im(ImDecoded::Reply(ImReply::Sent { seq, .. }))) => {
                acked.insert((uid, appinfo), (seq, to, body));
            }
            Ok(Reply::Error { code, .. }) if code == ErrorCode::Busy as u16 => {
                unanswered.push((appinfo, to, body));
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => {
                unanswered.push((appinfo, to, body));
                break;
            }
        }
    }
    (acked, unanswered)
}

#[test]
fn kill_9_under_im_load_loses_and_duplicates_no_acknowledged_message() {
    let rounds: u64 = std::env::var("HONGBAO_IM_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let event = Event::new();
    let users: Vec<u64> = (1..=8).collect();
    let mut acked = Acked::new();
    let mut retry: Vec<(u64, u128, Target, Vec<u8>)> = Vec::new();
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(5);
    {
        let server = event.serve("data", &["--cores", "2"]);
        let mut owner = server.client(&event.auth(1));
        assert!(matches!(
            owner.group_create(900, &users[1..]).unwrap(),
            Reply::Im(ImDecoded::Reply(ImReply::Group { .. }))
        ));
    }
    for round in 0..rounds {
        let mut server = event.serve("data", &["--cores", "2"]);
        // Sends that got no answer before a crash are retried with their appinfo: each is
        // stored at most once, and acknowledged with its original seq if it was stored.
        {
            let mut by_sender: HashMap<u64, Client> = HashMap::new();
            for (uid, appinfo, to, body) in retry.drain(..) {
                let c = by_sender
                    .entry(uid)
                    .or_insert_with(|| server.client(&event.auth(uid)));
                let (seq, _) = sent(c.im_send(appinfo, to, Class::Chat, &body).unwrap());
                if let Some((s, ..)) = acked.get(&(uid, appinfo)) {
                    assert_eq!(*s, seq, "a retry got another seq than the original");
                }
                acked.insert((uid, appinfo), (seq, to, body));
            }
        }
        let handles: Vec<_> = users
            .iter()
            .map(|&uid| {
                let addr = server.binary;
                let auth = event.auth(uid);
                let users = users.clone();
                let base = (u128::from(round) << 64) | (u128::from(uid) << 32);
                std::thread::spawn(move || sender(addr, auth, uid, &users, round * 100 + uid, base))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(rng.random_range(200..700)));
        server.kill9();
        for (uid, h) in users.iter().zip(handles) {
            let (a, unanswered) = h.join().unwrap();
            acked.extend(a);
            retry.extend(unanswered.into_iter().map(|(ap, to, b)| (*uid, ap, to, b)));
        }
    }
    // Restart once more and check every stream against what was acknowledged.
    let server = event.serve("data", &["--cores", "2"]);
    assert!(acked.len() > 100, "only {} sends acknowledged", acked.len());
    eprintln!("{} sends acknowledged over {rounds} crashes", acked.len());
    // Fan-outs a crash interrupted resume at start: pull until every stored message is in all
    // of its streams (streams only grow), or 10 s have passed.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (streams, copies, expected) = loop {
        let mut streams: HashMap<u64, Vec<Entry>> = HashMap::new();
        for &u in &users {
            let mut c = server.client(&event.auth(u));
            let all = pull_all(&mut c);
            assert_contiguous(&all);
            streams.insert(u, all);
        }
        let mut copies: HashMap<(u64, u64), usize> = HashMap::new();
        let mut expected: HashMap<(u64, u64), usize> = HashMap::new();
        for (&u, entries) in &streams {
            for e in entries {
                *copies.entry((e.sender, e.sender_seq)).or_default() += 1;
                let n = match e.to {
                    Target::User(r) if r == e.sender => 1,
                    Target::User(_) => 2,
                    Target::Group(_) => users.len(),
                };
                expected.insert((e.sender, e.sender_seq), n);
                if e.sender == u {
                    assert_eq!(e.seq, e.sender_seq, "a sender's own copy sits at its seq");
                }
            }
        }
        let settled = expected.iter().all(|(id, n)| copies[id] >= *n);
        if settled || std::time::Instant::now() > deadline {
            break (streams, copies, expected);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Every message stored (acknowledged or not) is in each of its streams exactly once.
    for (id, n) in &expected {
        assert_eq!(
            copies[id], *n,
            "message {}#{} has {} copies",
            id.0, id.1, copies[id]
        );
    }
    for (&(uid, _appinfo), (seq, to, body)) in &acked {
        let recipients = match to {
            Target::User(r) if *r == uid => 1,
            Target::User(_) => 2,
            Target::Group(_) => users.len(),
        };
        assert_eq!(
            copies.get(&(uid, *seq)).copied().unwrap_or(0),
            recipients,
            "message {uid}#{seq} ({}) is not in each of its {recipients} streams once",
            String::from_utf8_lossy(body)
        );
        let own = &streams[&uid][(*seq - 1) as usize];
        assert_eq!(&own.body, body);
    }
}

/// The max seq and the entries of the connection's user's stream.
fn page(c: &mut Client) -> (u64, Vec<Entry>) {
    match c.im_sync(0, 0).unwrap() {
        Reply::Im(ImDecoded::Page { entries, max_seq }) => (max_seq, entries),
        other => panic!("not a page: {other:?}"),
    }
}

/// A one-core server with these settings (a config file written into the event's directory).
fn one_core_with(event: &Event, file: &str, settings: &str) -> common::Server {
    let cfg = event.path().join(file);
    std::fs::write(&cfg, settings).unwrap();
    let cfg = cfg.to_str().unwrap().to_string();
    event.serve("data", &["--cores", "1", "--config", cfg.as_str()])
}

#[test]
fn retention_drops_old_messages_and_compaction_keeps_money_and_seqs() {
    use hongbao::wire::ops::ShakeOutcome;
    let event = Event::new();
    let cfg = event.path().join("retention.toml");
    std::fs::write(
        &cfg,
        "[im]\nretention_s = 3\ncompact_every_s = 1\n[store]\nsegment_bytes = 4194304\n",
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap().to_string();
    let args = ["--cores", "1", "--no-pacing", "--config", cfg.as_str()];
    let mut server = event.serve("data", &args);
    // Money in the first segment: a claim.
    let mut m = server.client(&event.auth(50));
    let token = match m.shake().unwrap() {
        Reply::Shake(s) if s.outcome == ShakeOutcome::Envelope => s.token.unwrap(),
        other => panic!("no envelope: {other:?}"),
    };
    assert!(matches!(m.open(&token).unwrap(), Reply::Open(_)));
    // User 3's only message, then 300 large ones to user 2: three 4 MiB segments.
    let mut a = server.client(&event.auth(1));
    assert_eq!(
        sent(
            a.im_send(1, Target::User(3), Class::Chat, b"early")
                .unwrap()
        ),
        (1, false)
    );
    let big = vec![b'm'; hongbao::im::BODY_MAX];
    for k in 0..300u128 {
        assert!(matches!(
            a.im_send(100 + k, Target::User(2), Class::Chat, &big)
                .unwrap(),
            Reply::Im(ImDecoded::Reply(ImReply::Sent { .. }))
        ));
    }
    let mut b = server.client(&event.auth(2));
    let mut c = server.client(&event.auth(3));
    assert_eq!(pull_until(&mut b, 300).len(), 300);
    assert_eq!(pull_until(&mut c, 1).len(), 1);
    let claims_before = common::run(&["claims", "--data", "data"], event.path()).stdout;
    let core_dir = event.path().join("data/core-0");
    let segment_bytes = |id: u64| {
        std::fs::metadata(core_dir.join(format!("{id:016x}.log")))
            .unwrap()
            .len()
    };
    assert!(segment_bytes(0) > 4_000_000 && segment_bytes(1) > 4_000_000);

    // Retention passes run every second; the first two segments expire 3 s after the next
    // ones were started.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while server.metric("hongbao_log_compactions_total") < 2
        || server.metric("hongbao_im_expired_entries_total") < 301
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no compaction in 30 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(segment_bytes(0) < 100_000 && segment_bytes(1) < 100_000);
    // Old messages are gone; the streams' seqs stay where they were.
    let (max, entries) = page(&mut b);
    assert_eq!((max, entries.len()), (300, 0));
    let (max, entries) = page(&mut c);
    assert_eq!((max, entries.len()), (1, 0));
    // The money is untouched, at the same positions.
    let claims_after = common::run(&["claims", "--data", "data"], event.path()).stdout;
    assert!(!claims_before.is_empty());
    assert_eq!(claims_after, claims_before);

    // A crash and a restart from the compacted log: the seqs go on, nothing comes back.
    server.kill9();
    let server = event.serve("data", &args);
    let mut a = server.client(&event.auth(1));
    let mut b = server.client(&event.auth(2));
    let mut c = server.client(&event.auth(3));
    assert_eq!(page(&mut b), (300, Vec::new()));
    assert_eq!(page(&mut c), (1, Vec::new()));
    assert_eq!(
        sent(a.im_send(7, Target::User(3), Class::Chat, b"new").unwrap()),
        (302, false)
    );
    let fresh = pull_until(&mut c, 1);
    assert_eq!(fresh.len(), 1);
    assert_eq!((fresh[0].seq, fresh[0].body.as_slice()), (2, &b"new"[..]));
    assert_eq!(event.claims("data").len(), 1);
}

#[test]
fn sends_beyond_what_the_log_takes_are_accepted_and_stored_in_order() {
    let event = Event::new();
    // The smallest backlog the server allows: a pipeline of 16 KiB messages outruns it.
    let server = one_core_with(&event, "small-log.toml", "[store]\npending_bytes = 65536\n");
    let mut a = server.client(&event.auth(1));
    let n = 150u32;
    let mut ids = Vec::new();
    for k in 0..n {
        let mut body = vec![b'.'; hongbao::im::BODY_MAX];
        body[..4].copy_from_slice(&k.to_le_bytes());
        let p =
            hongbao::wire::im::encode_send(u128::from(k) + 1, Target::User(2), Class::Chat, &body);
        ids.push(a.send(OP_SEND, &p));
    }
    a.flush().unwrap();
    let (mut stored, mut accepted) = (0, 0);
    for id in ids {
        let (got, reply) = a.recv_reply().unwrap();
        assert_eq!(got, id);
        match reply {
            Reply::Im(ImDecoded::Reply(ImReply::Sent { .. })) => stored += 1,
            Reply::Im(ImDecoded::Reply(ImReply::Accepted { .. })) => accepted += 1,
            other => panic!("neither stored nor accepted: {other:?}"),
        }
    }
    assert!(
        accepted > 0,
        "the log never fell behind ({stored} stored at once)"
    );
    // Every accepted message is stored soon after, in send order, in both streams.
    let mut b = server.client(&event.auth(2));
    for c in [&mut a, &mut b] {
        let all = pull_until(c, n as usize);
        assert_eq!(all.len(), n as usize);
        assert_contiguous(&all);
        let order: Vec<u32> = all
            .iter()
            .map(|e| u32::from_le_bytes(e.body[..4].try_into().unwrap()))
            .collect();
        assert_eq!(order, (0..n).collect::<Vec<_>>());
    }
    // A retry of an accepted message now answers the stored original.
    let mut body = vec![b'.'; hongbao::im::BODY_MAX];
    body[..4].copy_from_slice(&(n - 1).to_le_bytes());
    assert_eq!(
        sent(
            a.im_send(u128::from(n), Target::User(2), Class::Chat, &body)
                .unwrap()
        ),
        (u64::from(n), true)
    );
    assert!(server.metric("hongbao_im_parked_total") >= accepted);
}

#[test]
fn over_the_memory_limit_sends_are_busy_and_the_server_goes_on() {
    let event = Event::new();
    // 1 MiB: the server's own heap is over it from the start.
    let server = one_core_with(&event, "tiny-memory.toml", "[im]\nmemory_max_mb = 1\n");
    let (_, text) = http(server.http, "GET", "/metrics", None, "");
    let heap: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("hongbao_heap_bytes ")?.parse().ok())
        .expect("the heap gauge");
    assert!(heap > 1 << 20, "heap {heap}");
    // The limit is checked every tick.
    std::thread::sleep(Duration::from_millis(100));
    let mut a = server.client(&event.auth(1));
    let r = a
        .im_send(1, Target::User(2), Class::Chat, b"hello")
        .unwrap();
    assert_eq!(error(r), ErrorCode::Busy as u16);
    std::thread::sleep(Duration::from_millis(50)); // counters are published every tick
    assert!(server.metric("hongbao_im_memory_refused_total") >= 1);
    // Pulls, and the money side, go on.
    assert_eq!(page(&mut a), (0, Vec::new()));
    assert!(matches!(a.shake().unwrap(), Reply::Shake(_)));
    assert!(server.stderr().contains("im.memory_max_mb"));
}

#[test]
fn bulk_records_ride_urgent_commits_and_still_go_alone() {
    // Huge-group messages and fan-out bookkeeping wait up to store.bulk_hold_us for a chat's
    // commit (R22); with no chat coming they must still be written, answered and delivered.
    for (file, hold) in [("hold.toml", 5_000u32), ("no-hold.toml", 0)] {
        let event = Event::new();
        let server = one_core_with(&event, file, &format!("[store]\nbulk_hold_us = {hold}\n"));
        let owner = 1u64;
        let members: Vec<u64> = (10_000..10_000 + hongbao::im::engine::HUGE_GROUP as u64).collect();
        let mut o = server.client(&event.auth(owner));
        assert!(matches!(
            o.group_create(9, &members).unwrap(),
            Reply::Im(ImDecoded::Reply(ImReply::Group { .. }))
        ));
        let mut last = server.client(&event.auth(*members.last().unwrap()));
        pull_all(&mut last);
        for i in 0..5u128 {
            // A chat (urgent), then at once a message to the huge group (bulk).
            sent(
                o.im_send(2 * i + 1, Target::User(2), Class::Chat, b"chat")
                    .unwrap(),
            );
            sent(
                o.im_send(2 * i + 2, Target::Group(9), Class::Chat, b"group")
                    .unwrap(),
            );
        }
        let got = pull_until(&mut last, 5);
        assert_eq!(got.len(), 5, "hold {hold}");
        assert_contiguous(&got);
        assert!(got.iter().all(|e| &e.body[..] == b"group"));
        let mut chat = server.client(&event.auth(2));
        assert_eq!(pull_until(&mut chat, 5).len(), 5);
        let holds = server.metric("hongbao_log_bulk_holds_total");
        if hold == 0 {
            assert_eq!(holds, 0);
        } else {
            assert!(holds > 0, "no bulk record waited for an urgent commit");
        }
    }
}

/// Waits until a metric (summed over cores) reaches `min`.
fn wait_metric(server: &common::Server, name: &str, min: u64) {
    server.wait_metric(name, &format!(">= {min}"), |v| v >= min);
}

/// Every stream of these users, read through the server.
fn all_streams(clients: &mut [Client]) -> Vec<Vec<Entry>> {
    clients.iter_mut().map(pull_all).collect()
}

#[test]
fn old_messages_leave_memory_and_read_back_from_the_log_across_a_kill_9() {
    let event = Event::new();
    let cfg = event.path().join("cold.toml");
    // A one-second hot window, passes every second: messages go cold within ~2 s.
    std::fs::write(&cfg, "[im]\nhot_s = 1\ncompact_every_s = 1\n").unwrap();
    let cfg = cfg.to_str().unwrap().to_string();
    let args = ["--cores", "2", "--config", cfg.as_str()];
    let mut server = event.serve("data", &args);
    let users: Vec<u64> = (1..=6).collect();
    let mut clients: Vec<Client> = users
        .iter()
        .map(|&u| server.client(&event.auth(u)))
        .collect();
    assert!(matches!(
        clients[0].group_create(77, &users[1..]).unwrap(),
        Reply::Im(ImDecoded::Reply(ImReply::Group { .. }))
    ));
    // Chats around the ring, some to the group, one body to find on the disk later.
    for round in 0..5u128 {
        for (i, &u) in users.iter().enumerate() {
            let to = if round == 2 {
                Target::Group(77)
            } else {
                Target::User(users[(i + 1) % users.len()])
            };
            let body = format!("round {round} from {u}");
            let r = clients[i]
                .im_send(
                    1000 * u128::from(u) + round,
                    to,
                    Class::Chat,
                    body.as_bytes(),
                )
                .unwrap();
            sent(r);
        }
    }
    // Each user: 4 own chats + 4 received + 6 group messages.
    let total = 14 * users.len();
    for c in clients.iter_mut() {
        assert_eq!(pull_until(c, 14).len(), 14);
    }
    let before = all_streams(&mut clients);
    for s in &before {
        assert_contiguous(s);
    }

    // Every entry leaves memory at a retention pass after its second in the hot window.
    wait_metric(&server, "hongbao_im_cold_entries", total as u64);
    // No message is kept in memory for them any more, and the table gave its slots back.
    for name in ["hongbao_im_kept_messages", "hongbao_im_kept_slots"] {
        server.wait_metric(name, "0", |v| v == 0);
    }
    // Pages read them back from the log exactly as they were (users of both cores, asked
    // through connections of either core).
    assert_eq!(all_streams(&mut clients), before);
    wait_metric(&server, "hongbao_im_cold_reads_total", total as u64);
    // A retried send is answered from its cold entry: same seq, stored once.
    let (seq, duplicate) = sent(
        clients[0]
            .im_send(1000, Target::User(2), Class::Chat, b"round 0 from 1")
            .unwrap(),
    );
    assert_eq!((seq, duplicate), (before[0][0].seq, true));
    // A receipt for a cold entry: user 2 read user 1's first chat.
    let chat = before[1]
        .iter()
        .find(|e| e.sender == 1 && e.body == b"round 0 from 1")
        .expect("user 2 got it");
    sent(clients[1].im_ack_read(chat.seq).unwrap());
    // The sender's read list follows asynchronously (R19).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match clients[0].im_read_list(chat.sender_seq, 0).unwrap() {
            Reply::Im(ImDecoded::Reply(ImReply::Readers { read: 1, uids, .. })) => {
                assert_eq!(uids, vec![2]);
                break;
            }
            Reply::Im(ImDecoded::Reply(ImReply::Readers { read: 0, .. }))
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10))
            }
            other => panic!("no read list with the reader: {other:?}"),
        }
    }
    assert_eq!(server.metric("hongbao_im_cold_read_errors_total"), 0);

    // A damaged record: the page that needs it is refused `unreadable`, the server goes on.
    let segment = event.path().join("data/core-0/0000000000000000.log");
    let segment1 = event.path().join("data/core-1/0000000000000000.log");
    let needle = b"round 4 from";
    let (path, mut bytes, at) = [segment, segment1]
        .into_iter()
        .find_map(|p| {
            let b = std::fs::read(&p).unwrap();
            let at = b.windows(needle.len()).position(|w| w == needle)?;
            Some((p, b, at))
        })
        .expect("the body is on a disk");
    bytes[at] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();
    let victims: Vec<usize> = (0..users.len())
        .filter(|&i| {
            matches!(
                clients[i].im_sync(0, 0).unwrap(),
                Reply::Error { code, .. } if code == ErrorCode::Unreadable as u16
            )
        })
        .collect();
    assert!(!victims.is_empty(), "no page needed the damaged record");
    wait_metric(
        &server,
        "hongbao_im_cold_read_errors_total",
        victims.len() as u64,
    );
    bytes[at] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();
    // Repaired, every page reads again: the streams as before plus the receipt, which went
    // to the reader's stream and the sender's.
    let after = all_streams(&mut clients);
    for (i, (a, b)) in after.iter().zip(&before).enumerate() {
        assert_eq!(&a[..b.len()], &b[..]);
        assert_eq!(a.len(), b.len() + usize::from(i < 2));
    }

    // A crash: recovery rebuilds the streams, old entries cold again, read back the same.
    let now = all_streams(&mut clients);
    server.kill9();
    let server = event.serve("data", &args);
    let mut clients: Vec<Client> = users
        .iter()
        .map(|&u| server.client(&event.auth(u)))
        .collect();
    assert_eq!(all_streams(&mut clients), now);
    wait_metric(&server, "hongbao_im_cold_entries", total as u64);
    assert_eq!(all_streams(&mut clients), now);
    // The streams go on where they were.
    let (seq, _) = sent(
        clients[2]
            .im_send(9, Target::User(4), Class::Chat, b"after")
            .unwrap(),
    );
    assert_eq!(seq, now[2].len() as u64 + 1);
    let s4 = pull_until(&mut clients[3], now[3].len() + 1);
    assert_contiguous(&s4);
    assert_eq!(s4.last().unwrap().body, b"after");
}

#[test]
fn segments_started_long_after_the_server_do_not_expire_young_messages() {
    // Retention decides by the time each segment was started (its successor's header); a
    // segment that claimed the server's start time instead made young messages look expired
    // once the server had run longer than the retention.
    let event = Event::new();
    let server = one_core_with(
        &event,
        "young.toml",
        "[im]\nretention_s = 5\ncompact_every_s = 1\n[store]\nsegment_bytes = 4194304\n",
    );
    std::thread::sleep(Duration::from_secs(6));
    let mut a = server.client(&event.auth(1));
    let big = vec![b'y'; hongbao::im::BODY_MAX];
    // About 5 MiB: the first segment fills and the next one starts now.
    for k in 0..320u128 {
        sent(
            a.im_send(100 + k, Target::User(2), Class::Chat, &big)
                .unwrap(),
        );
    }
    let mut b = server.client(&event.auth(2));
    assert_eq!(pull_until(&mut b, 320).len(), 320);
    // Two retention passes later, less than the retention after the sends: nothing went.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(server.metric("hongbao_im_expired_entries_total"), 0);
    assert_eq!(server.metric("hongbao_log_compactions_total"), 0);
    let all = pull_all(&mut b);
    assert_eq!(all.len(), 320);
    assert_contiguous(&all);
}

/// Group records (changes and snapshots) in `core`'s log, as (kind, gid, version).
fn group_records(event: &Event, core: u16, gid: u64) -> Vec<(u8, u64)> {
    use hongbao::im::record::{KIND_GROUP, KIND_GROUP_SNAPSHOT};
    let dir = event.path().join(format!("data/core-{core}"));
    let mut out = Vec::new();
    for id in hongbao::store::file::list_segments(&dir).unwrap() {
        hongbao::store::compact::scan_segment(&dir, core, id, |_, v| {
            if matches!(v.kind, KIND_GROUP | KIND_GROUP_SNAPSHOT) && v.stream == gid {
                out.push((v.kind, v.seq));
            }
        })
        .unwrap();
    }
    out
}

fn group_version(r: Reply) -> u64 {
    match r {
        Reply::Im(ImDecoded::Reply(ImReply::Group { version, .. })) => version,
        other => panic!("not a group change: {other:?}"),
    }
}

#[test]
fn group_history_collapses_to_a_snapshot_and_a_kill_9_restarts_from_it() {
    use hongbao::im::home;
    use hongbao::im::record::{KIND_GROUP, KIND_GROUP_SNAPSHOT};
    let event = Event::new();
    let cfg = event.path().join("history.toml");
    std::fs::write(
        &cfg,
        "[im]\nretention_s = 3\ncompact_every_s = 1\n[store]\nsegment_bytes = 4194304\n",
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap().to_string();
    let args = ["--cores", "2", "--config", cfg.as_str()];
    let mut server = event.serve("data", &args);
    let gid = 88u64;
    let core = home(gid, 2);
    // Users homed on the group's core, whose messages roll that core's log.
    let local: Vec<u64> = (1..).filter(|&u| home(u, 2) == core).take(8).collect();
    let owner = local[0];
    let mut o = server.client(&event.auth(owner));
    assert_eq!(group_version(o.group_create(gid, &local[1..6]).unwrap()), 1);
    // A message at version 1, then members leave and join: history its read list needs.
    sent(
        o.im_send(1, Target::Group(gid), Class::Chat, b"at v1")
            .unwrap(),
    );
    assert_eq!(group_version(o.group_remove(gid, &[local[1]]).unwrap()), 2);
    assert_eq!(group_version(o.group_remove(gid, &[local[2]]).unwrap()), 3);
    assert_eq!(group_version(o.group_add(gid, &[local[6]]).unwrap()), 4);
    let read_list = |c: &mut Client, seq| match c.im_read_list(seq, 0).unwrap() {
        Reply::Im(ImDecoded::Reply(ImReply::Readers { unread, .. })) => unread,
        other => panic!("{other:?}"),
    };
    assert_eq!(read_list(&mut o, 1), 5, "the five members at version 1");
    assert_eq!(server.metric("hongbao_im_group_past_memberships"), 0);
    // About 5 MiB between two users of that core: its first segment fills and expires.
    let mut a = server.client(&event.auth(local[7]));
    let big = vec![b'h'; hongbao::im::BODY_MAX];
    for k in 0..320u128 {
        sent(
            a.im_send(100 + k, Target::User(local[6]), Class::Chat, &big)
                .unwrap(),
        );
    }
    // The message at version 1 expires, so the memberships that ended go (floor round);
    // the first segment is compacted after a snapshot of the group is durable.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while server.metric("hongbao_im_group_history_forgotten_total") < 2
        || server.metric("hongbao_im_group_snapshots_total") < 1
        || server.metric("hongbao_log_compactions_total") < 1
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no collapsed history in 30 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(server.metric("hongbao_im_group_past_memberships"), 0);
    // Members see the group as before; a message goes to exactly them.
    let members = |c: &mut Client| match c.group_members(gid, 0).unwrap() {
        Reply::Im(ImDecoded::Members { members, .. }) => {
            let mut m = members;
            m.sort_unstable();
            m
        }
        other => panic!("{other:?}"),
    };
    let mut want: Vec<u64> = [owner, local[3], local[4], local[5], local[6]].into();
    want.sort_unstable();
    assert_eq!(members(&mut o), want);
    sent(
        o.im_send(2, Target::Group(gid), Class::Chat, b"at v4")
            .unwrap(),
    );

    server.kill9();
    // On disk: the snapshot, and none of the four changes it covers.
    let records = group_records(&event, core, gid);
    assert!(
        records.iter().all(|&(k, _)| k == KIND_GROUP_SNAPSHOT)
            && records.contains(&(KIND_GROUP_SNAPSHOT, 4)),
        "{records:?}"
    );
    let server = event.serve("data", &args);
    let mut o = server.client(&event.auth(owner));
    assert_eq!(members(&mut o), want);
    let seq = sent(
        o.im_send(3, Target::Group(gid), Class::Chat, b"after")
            .unwrap(),
    )
    .0;
    assert_eq!(read_list(&mut o, seq), 4);
    // The versions go on from the snapshot's; the member who left at 2 can come back.
    assert_eq!(group_version(o.group_add(gid, &[local[1]]).unwrap()), 5);
    sent(
        o.im_send(4, Target::Group(gid), Class::Chat, b"at v5")
            .unwrap(),
    );
    let mut back = server.client(&event.auth(local[1]));
    let got = pull_until(&mut back, 1);
    assert_eq!(got.last().unwrap().body, b"at v5");
    assert!(group_records(&event, core, gid).contains(&(KIND_GROUP, 5)));
}

/// The same 16 appinfo bytes are the same message over both protocols (HTTP's `appinfo=` is
/// those bytes in order, as hex), and a group change that changes nothing writes no new
/// version.
#[test]
fn appinfo_means_the_same_over_both_protocols_and_no_op_group_changes_keep_the_version() {
    let event = Event::new();
    let server = event.serve("data", &["--cores", "2"]);
    let mut a = server.client(&event.auth(41));
    let bytes: [u8; 16] = core::array::from_fn(|i| i as u8 + 1);
    let appinfo = u128::from_le_bytes(bytes);
    let (seq, dup) = sent(
        a.im_send(appinfo, Target::User(42), Class::Chat, b"once")
            .unwrap(),
    );
    assert!(!dup);
    let hex = "0102030405060708090a0b0c0d0e0f10";
    let (status, body) = http(
        server.http,
        "POST",
        &format!("/im/send?to=user:42&appinfo={hex}"),
        Some(&event.auth_hex(41)),
        "once",
    );
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["seq"].as_u64(), v["duplicate"].as_bool()),
        (Some(seq), Some(true)),
        "{body}"
    );
    let (_, body) = http(
        server.http,
        "GET",
        "/im/sync?after=0",
        Some(&event.auth_hex(41)),
        "",
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["entries"][0]["appinfo"], hex, "{body}");
    assert_eq!(
        v["entries"].as_array().unwrap().len(),
        1,
        "stored once: {body}"
    );

    let version = |r: Reply| match r {
        Reply::Im(ImDecoded::Reply(ImReply::Group {
            version, members, ..
        })) => (version, members),
        other => panic!("{other:?}"),
    };
    // The creator is a member (created with 2 others: 3 members).
    assert_eq!(version(a.group_create(77, &[42, 43]).unwrap()), (1, 3));
    assert_eq!(
        version(a.group_add(77, &[42]).unwrap()),
        (1, 3),
        "add of a member"
    );
    assert_eq!(
        version(a.group_remove(77, &[44]).unwrap()),
        (1, 3),
        "removal of a non-member"
    );
    assert_eq!(
        version(a.group_add(77, &[42, 44]).unwrap()),
        (2, 4),
        "only 44 is new"
    );
    assert_eq!(version(a.group_remove(77, &[44, 45]).unwrap()), (3, 3));
}
