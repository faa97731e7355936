"""Confluent's own Kafka client with its Schema Registry serializers, for the Avro and JSON
Schema end-to-end tests: records are written and read back by an implementation independent of
Weir's.

    avro_client.py produce BROKERS REGISTRY TOPIC EVENTS   # EVENTS: JSON lines, see below
    avro_client.py consume BROKERS REGISTRY TOPIC PARTITIONS  # JSON lines on stdout

Each line of EVENTS is {"partition": P, "key": K, "schema": S, "value": V} to write V with the
Avro schema S (JSON text, looked up in the registry under TOPIC-value: it must be registered
already), {"partition": P, "key": K, "json_schema": S, "value": V} to write it with the JSON
Schema S (likewise), or {"partition": P, "key": K, "raw_base64": B} to write bytes B as they
are. `consume` reads values in either format (by the type of the schema their id names).
`consume` reads every committed record (read_committed) up to the end offsets found at start and
prints {"partition", "offset", "key", "value", "schema_id"} per record, keys and values decoded
with the schemas their ids name in the registry (keys that are not in the wire format as text).
"""

import base64
import datetime
import faulthandler
import json
import struct
import sys

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
from confluent_kafka.serialization import MessageField, SerializationContext


def registry_client(url):
    """The registry's client; a request without an answer in 10 s is sent again (the client
    has no timeout of its own)."""
    return SchemaRegistryClient({"url": url, "timeout": 10})


def produce(brokers, registry_url, topic, events_path):
    registry = registry_client(registry_url)
    serializers = {}
    producer = Producer({"bootstrap.servers": brokers, "enable.idempotence": True, "linger.ms": 5})
    errors = []

    def delivered(err, _msg):
        if err is not None:
            errors.append(str(err))

    with open(events_path) as f:
        for line in f:
            e = json.loads(line)
            if "raw_base64" in e:
                value = base64.b64decode(e["raw_base64"])
            elif "json_schema" in e:
                schema = e["json_schema"]
                if schema not in serializers:
                    serializers[schema] = JSONSerializer(
                        schema, registry, conf={"auto.register.schemas": False, "use.latest.version": False}
                    )
                value = serializers[schema](e["value"], SerializationContext(topic, MessageField.VALUE))
            else:
                schema = e["schema"]
                if schema not in serializers:
                    # The schema as registered: its id, not a new registration.
                    serializers[schema] = AvroSerializer(
                        registry, schema, conf={"auto.register.schemas": False, "use.latest.version": False}
                    )
                value = serializers[schema](e["value"], SerializationContext(topic, MessageField.VALUE))
            while True:
                try:
                    producer.produce(topic, value=value, key=e["key"], partition=e["partition"], on_delivery=delivered)
                    break
                except BufferError:
                    producer.poll(0.05)
    remaining = producer.flush(60)
    if remaining or errors:
        sys.exit(f"{remaining} record(s) not delivered; errors: {errors[:5]}")


def plain(v):
    """JSON for what fastavro decodes: timestamps as epoch milliseconds."""
    if isinstance(v, datetime.datetime):
        return round(v.timestamp() * 1000)
    raise TypeError(f"{type(v)} is not JSON")


def consume(brokers, registry_url, topic, partitions):
    registry = registry_client(registry_url)
    avro_values = AvroDeserializer(registry)
    json_values = JSONDeserializer(None, schema_registry_client=registry)
    keys = AvroDeserializer(registry)

    def values(payload, ctx):
        schema_type = registry.get_schema(struct.unpack(">I", payload[1:5])[0]).schema_type
        return (json_values if schema_type == "JSON" else avro_values)(payload, ctx)

    consumer = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": "weir-e2e-avro-check",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    ends = {}
    tps = []
    for p in range(partitions):
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
        ends[p] = high
        tps.append(TopicPartition(topic, p, low))
    consumer.assign(tps)
    done = {p for p in range(partitions) if ends[p] == 0}
    while len(done) < partitions:
        m = consumer.poll(1.0)
        if m is None:
            continue
        if m.error():
            if m.error().code() == KafkaError._PARTITION_EOF:
                if m.offset() >= ends[m.partition()]:
                    done.add(m.partition())
                continue
            sys.exit(f"reading {topic}: {m.error()}")
        ctx = SerializationContext(topic, MessageField.VALUE)
        raw_key = m.key()
        if raw_key is not None and len(raw_key) > 5 and raw_key[0] == 0:
            key = keys(raw_key, SerializationContext(topic, MessageField.KEY))
        else:
            key = raw_key.decode() if raw_key is not None else None
        payload = m.value()
        schema_id = struct.unpack(">I", payload[1:5])[0] if payload and payload[0] == 0 else None
        print(
            json.dumps(
                {
                    "partition": m.partition(),
                    "offset": m.offset(),
                    "key": key,
                    "value": values(payload, ctx),
                    "schema_id": schema_id,
                },
                default=plain,
            )
        )
        if m.offset() + 1 >= ends[m.partition()]:
            done.add(m.partition())
    consumer.close()


if __name__ == "__main__":
    # A client that hangs says where, and ends, before the test's own bound.
    faulthandler.dump_traceback_later(100, exit=True)
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "produce" and len(args) == 4:
        produce(*args)
    elif cmd == "consume" and len(args) == 4:
        consume(args[0], args[1], args[2], int(args[3]))
    else:
        sys.exit(__doc__)
