//! A small authoritative DNS server on 127.0.0.1 (UDP and TCP), answering from a table:
//! MX, A, AAAA, null MX, NXDOMAIN and SERVFAIL for test domains. Real DNS on the wire, built
//! with hickory-proto's message types, so the resolver under test is exercised for real.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::{Arc, Mutex};
use std::thread;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, MX};
use hickory_proto::rr::{Name, RData, Record, RecordType};

#[derive(Clone, Debug)]
pub enum Answer {
    Records(Vec<RData>),
    ServFail,
}

#[derive(Default)]
struct Zone {
    /// (lower-case name with the final dot, type) -> answer
    answers: HashMap<(String, RecordType), Answer>,
}

pub struct DnsServer {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
}

fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.').to_lowercase())
}

impl DnsServer {
    pub fn start() -> DnsServer {
        // A free UDP port may be taken on the TCP side (ephemeral ports of busy tests): retry.
        let (udp, tcp) = (0..100)
            .find_map(|_| {
                let udp = UdpSocket::bind("127.0.0.1:0").ok()?;
                let tcp = TcpListener::bind(udp.local_addr().ok()?).ok()?;
                Some((udp, tcp))
            })
            .expect("a port free for both UDP and TCP");
        let addr = udp.local_addr().unwrap();
        let zone: Arc<Mutex<Zone>> = Arc::default();
        let z = Arc::clone(&zone);
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok((n, peer)) = udp.recv_from(&mut buf) {
                if let Some(reply) = answer(&z, &buf[..n]) {
                    let _ = udp.send_to(&reply, peer);
                }
            }
        });
        let z = Arc::clone(&zone);
        thread::spawn(move || {
            for mut stream in tcp.incoming().flatten() {
                let mut len = [0u8; 2];
                while stream.read_exact(&mut len).is_ok() {
                    let mut query = vec![0u8; u16::from_be_bytes(len) as usize];
                    if stream.read_exact(&mut query).is_err() {
                        break;
                    }
                    if let Some(reply) = answer(&z, &query) {
                        let _ = stream.write_all(&(reply.len() as u16).to_be_bytes());
                        let _ = stream.write_all(&reply);
                    }
                }
            }
        });
        DnsServer { addr, zone }
    }

    fn set(&self, name: &str, kind: RecordType, answer: Answer) {
        self.zone
            .lock()
            .unwrap()
            .answers
            .insert((fqdn(name), kind), answer);
    }

    fn add(&self, name: &str, kind: RecordType, data: RData) {
        let mut zone = self.zone.lock().unwrap();
        let entry = zone
            .answers
            .entry((fqdn(name), kind))
            .or_insert(Answer::Records(Vec::new()));
        if let Answer::Records(records) = entry {
            records.push(data);
        }
    }

    pub fn mx(&self, domain: &str, preference: u16, host: &str) {
        let exchange = Name::from_ascii(fqdn(host)).unwrap();
        self.add(
            domain,
            RecordType::MX,
            RData::MX(MX::new(preference, exchange)),
        );
    }

    /// `MX 0 .`: the domain accepts no mail (RFC 7505).
    pub fn null_mx(&self, domain: &str) {
        self.add(domain, RecordType::MX, RData::MX(MX::new(0, Name::root())));
    }

    pub fn a(&self, host: &str, ip: &str) {
        let ip: Ipv4Addr = ip.parse().unwrap();
        self.add(host, RecordType::A, RData::A(A(ip)));
    }

    pub fn aaaa(&self, host: &str, ip: &str) {
        let ip: Ipv6Addr = ip.parse().unwrap();
        self.add(host, RecordType::AAAA, RData::AAAA(AAAA(ip)));
    }

    /// Every query for `name` gets SERVFAIL.
    pub fn servfail(&self, name: &str) {
        for kind in [RecordType::MX, RecordType::A, RecordType::AAAA] {
            self.set(name, kind, Answer::ServFail);
        }
    }
}

/// The reply to one query: records, NODATA for a known name, NXDOMAIN for an unknown one.
fn answer(zone: &Mutex<Zone>, query: &[u8]) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    let question = request.queries.first()?.clone();
    let name = question.name().to_ascii().to_lowercase();
    let mut reply = Message::new(
        request.metadata.id,
        MessageType::Response,
        request.metadata.op_code,
    );
    reply.metadata.authoritative = true;
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.add_query(question.clone());
    let zone = zone.lock().unwrap();
    match zone.answers.get(&(name.clone(), question.query_type())) {
        Some(Answer::ServFail) => reply.metadata.response_code = ResponseCode::ServFail,
        Some(Answer::Records(records)) => {
            for data in records {
                reply.add_answer(Record::from_rdata(
                    question.name().clone(),
                    60,
                    data.clone(),
                ));
            }
        }
        None if zone.answers.keys().any(|(n, _)| *n == name) => {}
        None => reply.metadata.response_code = ResponseCode::NXDomain,
    }
    reply.to_vec().ok()
}
