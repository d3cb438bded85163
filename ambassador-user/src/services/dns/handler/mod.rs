//! The wire side of the responder: one query's bytes in, what to do out (answer with these
//! bytes, forward, or drop), within what the query invites. The records come from the
//! [`Zone`]; no I/O here either.

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{DNSClass, Name, RecordType},
};

use super::zone::Zone;

/// The largest UDP answer sent, whatever a query's EDNS0 buffer size says (the DNS flag day
/// 2020 value, which avoids IP fragmentation on every usual path).
pub const MAX_UDP_PAYLOAD: u16 = 1232;
/// A UDP answer to a query without EDNS0 (RFC 1035).
pub const CLASSIC_UDP_PAYLOAD: u16 = 512;

/// How a query arrived: answers over UDP are bounded by what the query invites.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// UDP: at most 512 bytes, or the query's EDNS0 size up to [`MAX_UDP_PAYLOAD`].
    Udp,
    /// TCP: up to 65,535 bytes.
    Tcp,
}

/// What to do with one query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Send these bytes back.
    Answer {
        /// The encoded answer.
        bytes: Vec<u8>,
        /// Its response code.
        rcode: ResponseCode,
        /// Whether it was cut to fit (TC set: the client retries over TCP).
        truncated: bool,
    },
    /// A name outside the domain from a client that may use forwarding: relay it upstream, and
    /// send back at most `limit` bytes (see [`fit`]).
    Forward {
        /// The largest answer the client invited.
        limit: usize,
    },
    /// Not a query that deserves an answer (too short to carry an id, or a response: answering
    /// those could loop between two servers). Counted as malformed.
    Drop,
}

/// The largest answer a query invites over `transport`.
fn limit(query: &Message, transport: Transport) -> usize {
    match (transport, &query.edns) {
        (Transport::Tcp, _) => u16::MAX as usize,
        (Transport::Udp, None) => CLASSIC_UDP_PAYLOAD as usize,
        (Transport::Udp, Some(e)) => {
            e.max_payload().clamp(CLASSIC_UDP_PAYLOAD, MAX_UDP_PAYLOAD) as usize
        }
    }
}

/// Handles one query. `may_forward`: whether this client may have names outside the domain
/// forwarded (forwarding is on and the client is allowed).
pub fn handle(bytes: &[u8], zone: &Zone, transport: Transport, may_forward: bool) -> Reply {
    let query = match Message::from_vec(bytes) {
        Ok(q) => q,
        Err(_) => return malformed(bytes),
    };
    if query.message_type != MessageType::Query {
        return Reply::Drop;
    }
    let limit = limit(&query, transport);
    if query.op_code != OpCode::Query {
        return error(&query, ResponseCode::NotImp, limit);
    }
    let [q] = query.queries.as_slice() else {
        return error(&query, ResponseCode::FormErr, limit);
    };
    if query.edns.as_ref().is_some_and(|e| e.version() > 0) {
        return error(&query, ResponseCode::BADVERS, limit);
    }
    let qname = q.name().to_lowercase();
    if !zone.domain().zone_of(&qname) {
        return if may_forward {
            Reply::Forward { limit }
        } else {
            error(&query, ResponseCode::Refused, limit)
        };
    }
    if q.query_class() != DNSClass::IN
        || matches!(q.query_type(), RecordType::AXFR | RecordType::IXFR)
    {
        return error(&query, ResponseCode::Refused, limit);
    }
    let mut response = response_to(&query);
    response.metadata.authoritative = true;
    response.metadata.recursion_available = may_forward;
    let found = zone.lookup(&qname, q.name(), q.query_type());
    if !found.exists {
        response.metadata.response_code = ResponseCode::NXDomain;
    }
    if found.answers.is_empty() {
        // NXDOMAIN or NODATA: the SOA says how long to remember it (RFC 2308).
        response.add_authority(zone.soa());
    }
    response.add_answers(found.answers);
    response.add_additionals(found.additionals);
    encode(response, limit)
}

/// Fits a forwarded answer into what the client invited: as it is when it fits, else the
/// header and question with TC set (the client retries over TCP). `None` when it is not a
/// DNS message at all.
pub fn fit(answer: &[u8], limit: usize) -> Option<Vec<u8>> {
    if answer.len() <= limit {
        return Some(answer.to_vec());
    }
    let message = Message::from_vec(answer).ok()?;
    Some(truncated(&message))
}

/// A response carrying the query's id, opcode, RD bit, question and (when asked) EDNS0.
fn response_to(query: &Message) -> Message {
    let mut response = Message::response(query.id, query.op_code);
    response.metadata.recursion_desired = query.recursion_desired;
    response.add_queries(query.queries.iter().cloned());
    if query.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(MAX_UDP_PAYLOAD);
        response.set_edns(edns);
    }
    response
}

fn error(query: &Message, rcode: ResponseCode, limit: usize) -> Reply {
    let mut response = response_to(query);
    if query.queries.len() > 1 {
        response.queries.clear();
    }
    response.metadata.response_code = rcode;
    encode(response, limit)
}

/// A query that does not parse: FORMERR with its id when it has a header, else nothing.
fn malformed(bytes: &[u8]) -> Reply {
    // The header is 12 bytes; QR (the top bit of byte 2) set means a response.
    if bytes.len() < 12 || bytes[2] & 0x80 != 0 {
        return Reply::Drop;
    }
    let id = u16::from_be_bytes([bytes[0], bytes[1]]);
    let op = OpCode::from_u8((bytes[2] >> 3) & 0x0f);
    let response = Message::error_msg(id, op, ResponseCode::FormErr);
    let bytes = response.to_vec().expect("a bare header encodes");
    Reply::Answer {
        bytes,
        rcode: ResponseCode::FormErr,
        truncated: false,
    }
}

/// Encodes `response` within `limit`: additional records go first, then the answers (TC).
fn encode(mut response: Message, limit: usize) -> Reply {
    let rcode = response.response_code;
    let mut bytes = response.to_vec().unwrap_or_default();
    if bytes.len() > limit && !response.additionals.is_empty() {
        response.additionals.clear();
        bytes = response.to_vec().unwrap_or_default();
    }
    let mut cut = false;
    if bytes.is_empty() || bytes.len() > limit {
        bytes = truncated(&response);
        cut = true;
    }
    Reply::Answer {
        bytes,
        rcode,
        truncated: cut,
    }
}

fn truncated(message: &Message) -> Vec<u8> {
    let mut cut = message.truncate();
    cut.metadata.id = message.id;
    cut.to_vec().expect("a header and a question encode")
}

/// `answer` cut to its header and question, with TC set (what a rate limit "slips"); None
/// if it does not parse.
pub fn truncate(answer: &[u8]) -> Option<Vec<u8>> {
    Message::from_vec(answer).ok().map(|m| truncated(&m))
}

/// A query for tests, benches and fuzz seeds.
pub fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        Name::from_ascii(name).expect("a valid test name"),
        qtype,
    ));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().expect("a query encodes")
}

#[cfg(test)]
mod tests;
