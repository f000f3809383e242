//! A tiny authoritative DNS server on 127.0.0.1 (UDP) answering TXT and MX queries from a
//! zone the test controls (and may change while it runs), so resolver-dependent tests
//! never leave loopback. Messages are encoded and decoded by hickory-proto.
#![allow(dead_code)]

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{MX, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::UdpSocket;

/// Records by (lower-case name without the final dot, type). TXT values are the whole
/// text; MX values are "preference exchange".
pub type Zone = Arc<Mutex<HashMap<(String, RecordType), Vec<String>>>>;

/// A server for a fixed table of TXT records, one value per name.
pub async fn serve(txt: HashMap<String, String>) -> SocketAddr {
    let zone: Zone = Arc::new(Mutex::new(
        txt.into_iter()
            .map(|(k, v)| ((k, RecordType::TXT), vec![v]))
            .collect(),
    ));
    serve_zone(zone).await
}

fn rdata(kind: RecordType, value: &str) -> Option<RData> {
    match kind {
        // TXT strings are at most 255 octets each.
        RecordType::TXT => Some(RData::TXT(TXT::new(
            value
                .as_bytes()
                .chunks(255)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect(),
        ))),
        RecordType::MX => {
            let (pref, exchange) = value.split_once(' ')?;
            Some(RData::MX(MX::new(
                pref.parse().ok()?,
                Name::from_ascii(exchange).ok()?,
            )))
        }
        _ => None,
    }
}

/// A server answering from `zone` as it is at each query.
pub async fn serve_zone(zone: Zone) -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                return;
            };
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut resp = Message::new(
                query.metadata.id,
                MessageType::Response,
                query.metadata.op_code,
            );
            resp.metadata.authoritative = true;
            resp.metadata.recursion_desired = query.metadata.recursion_desired;
            resp.metadata.recursion_available = true;
            let mut name_exists = false;
            {
                let zone = zone.lock().unwrap();
                for q in &query.queries {
                    resp.add_query(q.clone());
                    let name = q
                        .name()
                        .to_ascii()
                        .trim_end_matches('.')
                        .to_ascii_lowercase();
                    name_exists |= zone.keys().any(|(n, _)| *n == name);
                    for value in zone
                        .get(&(name.clone(), q.query_type()))
                        .into_iter()
                        .flatten()
                    {
                        if let Some(data) = rdata(q.query_type(), value) {
                            resp.add_answer(Record::from_rdata(q.name().clone(), 60, data));
                        }
                    }
                }
            }
            if !name_exists {
                resp.metadata.response_code = ResponseCode::NXDomain;
            }
            if let Ok(bytes) = resp.to_vec() {
                let _ = sock.send_to(&bytes, peer).await;
            }
        }
    });
    addr
}
