//! Kafka on the local stack is real: transactions commit and abort, and a `read_committed`
//! consumer sees exactly the committed records.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use weir_e2e::{kafka_brokers, require_port, unique};

fn create_topic(topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create().expect("admin client");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let res = rt
        .block_on(
            admin.create_topics(&[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))], &AdminOptions::new()),
        )
        .expect("create_topics");
    for r in res {
        r.expect("topic created");
    }
}

#[test]
fn transactional_produce_and_read_committed_consume() {
    require_port("Kafka", 9092);
    let topic = unique("e2e-txn");
    create_topic(&topic, 2);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("transactional.id", unique("e2e-txn-id"))
        .create()
        .expect("producer");
    producer.init_transactions(Duration::from_secs(30)).expect("init_transactions");

    producer.begin_transaction().unwrap();
    for i in 0..10 {
        producer.send(BaseRecord::to(&topic).key(&format!("k{i}")).payload(&format!("committed-{i}"))).unwrap();
    }
    producer.commit_transaction(Duration::from_secs(30)).expect("commit");

    producer.begin_transaction().unwrap();
    for i in 0..5 {
        producer.send(BaseRecord::to(&topic).key(&format!("k{i}")).payload(&format!("aborted-{i}"))).unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    producer.abort_transaction(Duration::from_secs(30)).expect("abort");

    producer.begin_transaction().unwrap();
    producer.send(BaseRecord::to(&topic).key("last").payload("committed-last")).unwrap();
    producer.commit_transaction(Duration::from_secs(30)).expect("commit");

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", unique("e2e-reader"))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..2 {
        tpl.add_partition_offset(&topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < 11 && std::time::Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.expect("message");
            seen.push(String::from_utf8(m.payload().unwrap().to_vec()).unwrap());
        }
    }
    // Nothing more arrives: the aborted records stay invisible.
    let extra = consumer.poll(Duration::from_secs(2));
    assert!(extra.is_none(), "unexpected record after the committed ones");
    seen.sort();
    let mut want: Vec<String> = (0..10).map(|i| format!("committed-{i}")).collect();
    want.push("committed-last".into());
    want.sort();
    assert_eq!(seen, want);
}
