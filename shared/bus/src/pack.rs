//! Packing a batch of outgoing envelopes into one message per partition
//! ([`hcp_events::pack`] is the format). Each event keeps the partition of its key, computed as
//! librdkafka's default (`consistent_random`) partitioner does, CRC-32 of the key modulo the
//! partition count, so a stream's events land on the same partition packed or not, and in
//! order. Messages that cannot be packed (the compact encoding, a topic whose partition count
//! is unknown) travel as they are.

use std::borrow::Cow;
use std::collections::HashMap;

use hcp_events::headers;
use hcp_events::pack::{self, Item};

use crate::message::OutgoingMessage;

/// Bytes a packed item adds around its envelope (`{"event":…}` and its trace context), as
/// counted against [`PackLimits::max_bytes`].
const ITEM_OVERHEAD: usize = 64;

/// Limits of one packed message. Kafka's default `message.max.bytes` is about 1 MB.
#[derive(Debug, Clone, Copy)]
pub struct PackLimits {
    /// Events per message at most.
    pub max_events: usize,
    /// Payload bytes per message at most (a single larger event travels alone).
    pub max_bytes: usize,
}

impl Default for PackLimits {
    fn default() -> Self {
        Self {
            max_events: 500,
            max_bytes: 512 * 1024,
        }
    }
}

/// The partition librdkafka's default partitioner picks for `key`.
pub fn partition_of(key: &[u8], partitions: i32) -> i32 {
    if partitions <= 1 {
        return 0;
    }
    (crc32fast::hash(key) % partitions as u32) as i32
}

/// A message to produce, with the partition it must go to (`None`: the partitioner's choice).
#[derive(Debug, Clone)]
pub struct Routed {
    /// The message.
    pub message: OutgoingMessage,
    /// Its partition.
    pub partition: Option<i32>,
    /// How many events it carries.
    pub events: usize,
}

/// Groups `messages` by topic and partition and packs each group's runs of JSON envelopes into
/// as few messages as `limits` allow. Within a partition the output keeps the input's order;
/// across partitions order means nothing to Kafka. `partitions` gives each topic's partition
/// count (absent: that topic is sent unpacked, and so is a message with an empty key, both to
/// the partitioner's choice, which is the same one).
pub fn pack_by_partition(
    messages: &[OutgoingMessage],
    partitions: &HashMap<String, i32>,
    limits: PackLimits,
) -> Vec<Routed> {
    // Per (topic, partition), in order of first appearance: the messages, in input order.
    let mut groups: Vec<((&str, i32), Vec<&OutgoingMessage>)> = Vec::new();
    let mut index: HashMap<(&str, i32), usize> = HashMap::new();
    let mut out = Vec::with_capacity(messages.len());
    for m in messages {
        // An empty key is partitioned at random by librdkafka: leave it to it.
        let known = partitions.get(&m.topic).filter(|_| !m.key.is_empty());
        let Some(&n) = known else {
            out.push(Routed {
                message: m.clone(),
                partition: None,
                events: 1,
            });
            continue;
        };
        let key = (m.topic.as_str(), partition_of(m.key.as_bytes(), n));
        let i = *index.entry(key).or_insert_with(|| {
            groups.push((key, Vec::new()));
            groups.len() - 1
        });
        groups[i].1.push(m);
    }
    for ((_, partition), members) in groups {
        let mut run: Vec<&OutgoingMessage> = Vec::new();
        let mut run_bytes = 0;
        for m in members {
            let fits = run.len() < limits.max_events
                && run_bytes + m.payload.len() + ITEM_OVERHEAD <= limits.max_bytes;
            if !pack::packable(&m.payload) || !fits {
                flush(&mut run, partition, &mut out);
                run_bytes = 0;
            }
            if pack::packable(&m.payload) {
                run_bytes += m.payload.len() + ITEM_OVERHEAD;
                run.push(m);
            } else {
                out.push(Routed {
                    message: m.clone(),
                    partition: Some(partition),
                    events: 1,
                });
            }
        }
        flush(&mut run, partition, &mut out);
    }
    out
}

/// Emits a run: alone as it was, or packed.
fn flush(run: &mut Vec<&OutgoingMessage>, partition: i32, out: &mut Vec<Routed>) {
    match run.len() {
        0 => {}
        1 => out.push(Routed {
            message: run[0].clone(),
            partition: Some(partition),
            events: 1,
        }),
        n => {
            let payload = pack::pack(run.iter().map(|m| Item {
                envelope: &m.payload,
                traceparent: header(m, headers::TRACEPARENT),
                tracestate: header(m, headers::TRACESTATE),
            }));
            out.push(Routed {
                message: OutgoingMessage {
                    topic: run[0].topic.clone(),
                    key: run[0].key.clone(),
                    payload,
                    headers: vec![(headers::PACKED.to_owned(), n.to_string().into_bytes())],
                },
                partition: Some(partition),
                events: n,
            });
        }
    }
    run.clear();
}

fn header<'a>(m: &'a OutgoingMessage, name: &str) -> Option<Cow<'a, str>> {
    m.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| String::from_utf8_lossy(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str, key: &str, n: u32) -> OutgoingMessage {
        OutgoingMessage {
            topic: topic.into(),
            key: key.into(),
            payload: format!("{{\"n\":{n}}}").into_bytes(),
            headers: vec![(headers::TRACEPARENT.into(), format!("tp{n}").into_bytes())],
        }
    }

    /// (partition, [n...]) of every output message, unpacked again.
    fn unpacked(out: &[Routed]) -> Vec<(Option<i32>, Vec<String>)> {
        out.iter()
            .map(|r| {
                let items = pack::items(&r.message.payload).unwrap();
                assert_eq!(items.len(), r.events);
                (
                    r.partition,
                    items
                        .iter()
                        .map(|i| String::from_utf8_lossy(i.envelope).into_owned())
                        .collect(),
                )
            })
            .collect()
    }

    #[test]
    fn the_partition_matches_librdkafkas_default_partitioner() {
        // CRC-32 (IEEE) of the key, as librdkafka's rd_crc32: the standard check value.
        assert_eq!(crc32fast::hash(b"123456789"), 0xcbf4_3926);
        assert_eq!(partition_of(b"123456789", 3), (0xcbf4_3926_u32 % 3) as i32);
        assert_eq!(partition_of(b"anything", 1), 0);
    }

    #[test]
    fn events_of_one_partition_are_packed_in_order_and_keep_their_trace() {
        let counts = HashMap::from([("t".to_owned(), 3)]);
        let input: Vec<OutgoingMessage> = (0..30)
            .map(|n| msg("t", &format!("s{}", n % 7), n))
            .collect();
        let out = pack_by_partition(&input, &counts, PackLimits::default());
        assert!(out.len() <= 3, "{} messages", out.len());
        assert_eq!(out.iter().map(|r| r.events).sum::<usize>(), 30);
        for (partition, events) in unpacked(&out) {
            let p = partition.unwrap();
            let ns: Vec<u32> = events
                .iter()
                .map(|e| e[5..e.len() - 1].parse().unwrap())
                .collect();
            assert!(ns.windows(2).all(|w| w[0] < w[1]), "order kept: {ns:?}");
            for n in ns {
                assert_eq!(partition_of(format!("s{}", n % 7).as_bytes(), 3), p);
            }
        }
        let packed = out.iter().find(|r| r.events > 1).unwrap();
        let items = pack::items(&packed.message.payload).unwrap();
        let first: String = String::from_utf8_lossy(items[0].envelope).into_owned();
        assert_eq!(
            items[0].traceparent.as_deref(),
            Some(format!("tp{}", &first[5..first.len() - 1]).as_str())
        );
    }

    #[test]
    fn limits_split_runs_and_unpackable_or_unknown_messages_travel_alone() {
        let counts = HashMap::from([("t".to_owned(), 1)]);
        let mut input: Vec<OutgoingMessage> = (0..5).map(|n| msg("t", "k", n)).collect();
        let mut compact = msg("t", "k", 99);
        compact.payload = b"HCPB\x01rest".to_vec();
        input.insert(2, compact);
        input.push(msg("unknown-topic", "k", 7));
        let limits = PackLimits {
            max_events: 2,
            max_bytes: 1 << 20,
        };
        let out = pack_by_partition(&input, &counts, limits);
        let shape: Vec<(Option<i32>, usize)> =
            out.iter().map(|r| (r.partition, r.events)).collect();
        // [0,1] packed, the compact one alone, [3,4] packed, then [5] alone; the unknown topic
        // has no partition (the partitioner's choice).
        assert_eq!(
            shape,
            vec![
                (None, 1),
                (Some(0), 2),
                (Some(0), 1),
                (Some(0), 2),
                (Some(0), 1)
            ]
        );
        assert_eq!(out[2].message.payload, b"HCPB\x01rest");
    }
}
