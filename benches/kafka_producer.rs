//! The baseline for the Kafka throughput figure in `benches/e2e.sh`: a plain rdkafka producer
//! sending N messages of a given size (same settings as walwatch's sink: idempotent, acks=all,
//! linger 5 ms) and waiting for every delivery report.
//!
//!   cargo bench --bench kafka_producer -- BROKERS TOPIC COUNT VALUE_BYTES
//!
//! Prints `seconds messages` on stdout.

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

fn main() {
    // cargo passes `--bench` (and test runners `--list`); the rest are ours. Without
    // arguments (`cargo bench` of every bench, a test runner listing tests) there is nothing
    // to do: it needs a broker, which benches/e2e.sh provides.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let [brokers, topic, count, size] = &args[..] else {
        eprintln!(
            "kafka_producer: usage: kafka_producer BROKERS TOPIC COUNT VALUE_BYTES \
             (benches/e2e.sh runs it against a broker it starts)"
        );
        return;
    };
    let count: u64 = count.parse().expect("COUNT");
    let size: usize = size.parse().expect("VALUE_BYTES");
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let value = vec![b'x'; size];
    let started = Instant::now();
    for i in 0..count {
        let key = format!("{{\"id\":{i}}}");
        let mut record = BaseRecord::to(topic).key(&key).payload(&value);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => panic!("send: {e}"),
            }
        }
        if i % 1024 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(600)).expect("flush");
    println!("{:.3} {count}", started.elapsed().as_secs_f64());
}
