package dev.weir.bench;

import com.fasterxml.jackson.annotation.JsonIgnoreProperties;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.time.Duration;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.GlobalKTable;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.JoinWindows;
import org.apache.kafka.streams.kstream.KStream;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.kstream.SessionWindows;
import org.apache.kafka.streams.kstream.StreamJoined;
import org.apache.kafka.streams.kstream.TimeWindows;
import org.apache.kafka.streams.kstream.Windowed;
import org.apache.kafka.streams.processor.TimestampExtractor;
import org.apache.kafka.streams.state.SessionStore;
import org.apache.kafka.streams.state.WindowStore;

/**
 * Runs one benchmark query of bench/compare.sh as a Kafka Streams application written the way a
 * Kafka Streams user would: JSON through Jackson into POJOs, event time from the `ts` field
 * (5 s grace where Weir and Flink allow 5 s of out-of-orderness), RocksDB window stores with the
 * record cache, exactly_once_v2. The input topic is keyed by card_id, so windows need no
 * repartition; the join re-keys both sides by id (Kafka Streams joins on the record key).
 *
 * <p>Kafka Streams has no end of input: the run ends when the application's committed offsets
 * (committed in the same transactions as its output) reach the end of the input. Prints
 * "processed N records in S s (R records/s)", timed from the first record read.
 */
public final class StreamsBench {
  private StreamsBench() {}

  static final ObjectMapper JSON =
      new ObjectMapper().configure(DeserializationFeature.FAIL_ON_UNKNOWN_PROPERTIES, false);
  private static volatile long firstNanos = 0;

  /** An event with its event time (epoch ms). */
  public abstract static class Event {
    public long ts;
  }

  @JsonIgnoreProperties(ignoreUnknown = true)
  public static final class Payment extends Event {
    public String id;
    public String card_id;
    public String merchant_id;
    public double amount;
    public String status;
    public String country;
    public Long sent_ms;
  }

  /** Nexmark's person, auction and bid (the fields the queries use). */
  @JsonIgnoreProperties(ignoreUnknown = true)
  public static final class Person extends Event {
    public long id;
    public String name;
    public String city;
    public String state;
  }

  @JsonIgnoreProperties(ignoreUnknown = true)
  public static final class Auction extends Event {
    public long id;
    public long seller;
    public long category;
  }

  @JsonIgnoreProperties(ignoreUnknown = true)
  public static final class Bid extends Event {
    public long auction;
    public long bidder;
    public long price;
  }

  @JsonIgnoreProperties(ignoreUnknown = true)
  public static final class Merchant {
    public String merchant_id;
    public String category;
    public String country;
  }

  /** count, sum and max of the amounts of a window. */
  public static final class Agg {
    public long n;
    public double total;
    public double max = Double.NEGATIVE_INFINITY;

    Agg add(Payment p) {
      n++;
      total += p.amount;
      max = Math.max(max, p.amount);
      return this;
    }

    Agg merge(Agg o) {
      Agg m = new Agg();
      m.n = n + o.n;
      m.total = total + o.total;
      m.max = Math.max(max, o.max);
      return m;
    }
  }

  static <T> Serde<T> json(Class<T> type) {
    Serializer<T> ser = (topic, v) -> {
      try {
        return v == null ? null : JSON.writeValueAsBytes(v);
      } catch (IOException e) {
        throw new IllegalStateException(e);
      }
    };
    Deserializer<T> de = (topic, bytes) -> {
      if (bytes == null) {
        return null;
      }
      try {
        return JSON.readValue(bytes, type);
      } catch (IOException e) {
        return null; // an undecodable record is skipped, as the other systems do
      }
    };
    return Serdes.serdeFrom(ser, de);
  }

  /** Event time from the (already decoded) payment, else the record's; notes the first record read. */
  public static final class EventTime implements TimestampExtractor {
    @Override
    public long extract(ConsumerRecord<Object, Object> record, long partitionTime) {
      if (firstNanos == 0) {
        firstNanos = System.nanoTime();
      }
      return record.value() instanceof Event e ? e.ts : record.timestamp();
    }
  }

  public static void main(String[] argv) throws Exception {
    Map<String, String> args = Args.parse(argv);
    String query = Args.need(args, "query");
    String brokers = Args.need(args, "brokers");
    String input = Args.need(args, "input");
    String output = Args.need(args, "output");
    int threads = Integer.parseInt(args.getOrDefault("parallelism", "1"));
    long events = Long.parseLong(args.getOrDefault("events", "0"));
    String appId = "ks-bench-" + query + "-" + System.nanoTime();

    Properties props = new Properties();
    props.put(StreamsConfig.APPLICATION_ID_CONFIG, appId);
    props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
    props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
    props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, args.getOrDefault("commit-interval-ms", "1000"));
    props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, threads);
    props.put(StreamsConfig.STATE_DIR_CONFIG, Args.need(args, "state-dir"));
    props.put(StreamsConfig.REPLICATION_FACTOR_CONFIG, 1);
    props.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
    props.put(StreamsConfig.producerPrefix("transaction.timeout.ms"), 60000);
    // Output batches lz4-compressed, as Weir's Kafka sink and the benchmark's input are.
    props.put(StreamsConfig.producerPrefix("compression.type"), "lz4");

    Serde<Payment> payments = json(Payment.class);
    Serde<String> keys = Serdes.String();
    StreamsBuilder b = new StreamsBuilder();
    KStream<String, Payment> in = query.equals("passthrough") || query.startsWith("nexmark") ? null : b.stream(input,
        Consumed.with(keys, payments).withTimestampExtractor(new EventTime()))
        .filter((k, p) -> p != null);
    Produced<String, Map<String, Object>> out = Produced.with(keys, mapSerde());
    Duration grace = Duration.ofSeconds(5);
    switch (query) {
      case "passthrough" -> b.stream(input, Consumed.with(keys, Serdes.ByteArray()).withTimestampExtractor(new EventTime()))
          .to(output, Produced.with(keys, Serdes.ByteArray())); // each event unchanged
      case "filter_project" -> in.filter((k, p) -> p.amount > 100 && "approved".equals(p.status))
          .mapValues(p -> row("id", p.id, "card_id", p.card_id, "amount", p.amount, "ts", p.ts))
          .to(output, out);
      case "latency" -> in.filter((k, p) -> "approved".equals(p.status))
          .mapValues(p -> row("id", p.id, "card_id", p.card_id, "sent_ms", p.sent_ms))
          .to(output, out);
      case "tumbling_1m", "sliding_5m_1m" -> {
        TimeWindows windows = query.equals("tumbling_1m")
            ? TimeWindows.ofSizeAndGrace(Duration.ofMinutes(1), grace)
            : TimeWindows.ofSizeAndGrace(Duration.ofMinutes(5), grace).advanceBy(Duration.ofMinutes(1));
        boolean withMax = query.equals("tumbling_1m");
        in.groupByKey(Grouped.with(keys, payments)).windowedBy(windows)
            .aggregate(Agg::new, (k, p, agg) -> agg.add(p),
                Materialized.<String, Agg, WindowStore<Bytes, byte[]>>with(keys, json(Agg.class)))
            .toStream()
            .map((w, agg) -> KeyValue.pair(w.key(), windowRow(w, w.window().end(), agg, withMax)))
            .to(output, out);
      }
      case "session_2m" -> {
        Duration gap = Duration.ofMinutes(2);
        in.groupByKey(Grouped.with(keys, payments))
            .windowedBy(SessionWindows.ofInactivityGapAndGrace(gap, grace))
            .aggregate(Agg::new, (k, p, agg) -> agg.add(p), (k, a1, a2) -> a1.merge(a2),
                Materialized.<String, Agg, SessionStore<Bytes, byte[]>>with(keys, json(Agg.class)))
            .toStream()
            // Kafka Streams' session end is its last event; Weir's and Flink's add the gap.
            .map((w, agg) -> KeyValue.pair(w.key(),
                windowRow(w, w.window().end() + gap.toMillis(), agg, false)))
            .to(output, out);
      }
      case "join_1to1" -> {
        // Both sides are re-keyed by id through repartition topics, which reorders them (by
        // commit batches and by upstream task): the task waits for data on both sides, and the
        // grace is 1 minute (with 5 s, 15-30 % of the pairs were dropped as late).
        props.put(StreamsConfig.MAX_TASK_IDLE_MS_CONFIG, 5000);
        KStream<String, Payment> byId = in.selectKey((k, p) -> p.id);
        KStream<String, Payment> captures = b.stream(Args.need(args, "input2"),
                Consumed.with(keys, payments).withTimestampExtractor(new EventTime()))
            .filter((k, p) -> p != null).selectKey((k, p) -> p.id);
        byId.join(captures,
                (p, c) -> row("id", p.id, "card_id", p.card_id, "amount", p.amount, "captured", c.ts),
                JoinWindows.ofTimeDifferenceAndGrace(Duration.ofSeconds(10), Duration.ofMinutes(1)),
                StreamJoined.with(keys, payments, payments))
            .to(output, out);
      }
      case "enrich" -> {
        GlobalKTable<String, Merchant> merchants = b.globalTable(Args.need(args, "table"),
            Consumed.with(keys, json(Merchant.class)));
        in.leftJoin(merchants, (k, p) -> p.merchant_id, (p, m) -> row("id", p.id,
                "card_id", p.card_id, "merchant_id", p.merchant_id, "amount", p.amount,
                "status", p.status, "country", p.country, "ts", p.ts,
                "merchant_category", m == null ? null : m.category,
                "merchant_country", m == null ? null : m.country))
            .to(output, out);
      }
      case "nexmark_q3" -> {
        // Nexmark query 3 (local item suggestion): the persons as a global table.
        GlobalKTable<String, Person> persons = b.globalTable(Args.need(args, "nexmark-persons"),
            Consumed.with(keys, json(Person.class)));
        nexmark(b, args, "auctions", Auction.class)
            .filter((k, a) -> a.category == 10)
            .join(persons, (k, a) -> Long.toString(a.seller),
                (a, p) -> row("name", p.name, "city", p.city, "state", p.state, "id", a.id))
            .filter((k, r) -> Set.of("OR", "ID", "CA").contains(r.get("state")))
            .to(output, out);
      }
      case "nexmark_q8" -> {
        // Nexmark query 8 (new users who opened an auction in the same 10 s tumbling window):
        // the auctions re-keyed by seller, joined with the persons within 10 s, and the pairs
        // of one window kept (the DSL has no tumbling window join). With 2 partitions the
        // re-keyed auctions of the two upstream tasks meet in each repartition partition as far
        // apart in event time as those tasks drift (Kafka Streams has no watermark across
        // them): with 1 minute of grace 17 % of the pairs were dropped as late, so the grace
        // covers the whole data set.
        props.put(StreamsConfig.MAX_TASK_IDLE_MS_CONFIG, 5000);
        long size = 10_000;
        KStream<String, Auction> bySeller =
            nexmark(b, args, "auctions", Auction.class).selectKey((k, a) -> Long.toString(a.seller));
        nexmark(b, args, "persons", Person.class)
            .join(bySeller, (p, a) -> p.ts / size == a.ts / size
                    ? row("person_id", p.id, "name", p.name, "auction_id", a.id, "window_start", p.ts / size * size)
                    : null,
                JoinWindows.ofTimeDifferenceAndGrace(Duration.ofMillis(size), Duration.ofMinutes(30)),
                StreamJoined.with(keys, json(Person.class), json(Auction.class)))
            .filter((k, r) -> r != null)
            .to(output, out);
      }
      case "nexmark_auction_bids" -> {
        // The bids of each auction's first minute; both topics are keyed by auction id.
        props.put(StreamsConfig.MAX_TASK_IDLE_MS_CONFIG, 5000);
        nexmark(b, args, "auctions", Auction.class)
            .join(nexmark(b, args, "bids", Bid.class),
                (a, bid) -> row("auction", a.id, "seller", a.seller, "category", a.category,
                    "bidder", bid.bidder, "price", bid.price, "bid_ts", bid.ts),
                JoinWindows.ofTimeDifferenceAndGrace(Duration.ofMinutes(1), Duration.ofMinutes(1))
                    .before(Duration.ZERO),
                StreamJoined.with(keys, json(Auction.class), json(Bid.class)))
            .to(output, out);
      }
      default -> throw new IllegalArgumentException(
          "query " + query + " is not expressible in the Kafka Streams DSL");
    }

    List<String> inputs = switch (query) {
      case "join_1to1" -> List.of(input, args.get("input2"));
      case "nexmark_q3" -> List.of(args.get("nexmark-auctions"));
      case "nexmark_q8" -> List.of(args.get("nexmark-persons"), args.get("nexmark-auctions"));
      case "nexmark_auction_bids" -> List.of(args.get("nexmark-auctions"), args.get("nexmark-bids"));
      default -> List.of(input);
    };
    try (KafkaStreams streams = new KafkaStreams(b.build(), props);
        Admin admin = Admin.create(Map.of("bootstrap.servers", brokers))) {
      streams.setUncaughtExceptionHandler(e -> {
        e.printStackTrace();
        return org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse.SHUTDOWN_APPLICATION;
      });
      Map<TopicPartition, Long> end = endOffsets(admin, inputs);
      long started = System.nanoTime();
      streams.start();
      if (args.containsKey("unbounded")) {
        Thread.currentThread().join();
      }
      waitCommitted(admin, appId, end, streams);
      // Rows re-keyed through repartition topics are processed after their input's offsets
      // were committed: wait for the application's own topics too (they end when the inputs
      // are done, since rows and offsets are committed together).
      waitCommitted(admin, appId, repartitionEnds(admin, appId), streams);
      long done = System.nanoTime();
      long first = firstNanos == 0 ? started : firstNanos;
      double secs = (done - first) / 1e9;
      System.err.printf("processed %d records in %.3f s (%d records/s); %.3f s from start%n",
          events, secs, Math.round(events / secs), (done - started) / 1e9);
      streams.close(Duration.ofSeconds(30));
    }
    System.exit(0);
  }

  /** Waits until the application's committed offsets reach these ends. */
  static void waitCommitted(Admin admin, String appId, Map<TopicPartition, Long> end, KafkaStreams streams)
      throws Exception {
    while (true) {
      Map<TopicPartition, OffsetAndMetadata> committed =
          admin.listConsumerGroupOffsets(appId).partitionsToOffsetAndMetadata().get();
      if (end.entrySet().stream().allMatch(e -> {
        OffsetAndMetadata c = committed.get(e.getKey());
        return e.getValue() == 0 || (c != null && c.offset() >= e.getValue());
      })) {
        return;
      }
      if (streams.state() == KafkaStreams.State.ERROR || streams.state() == KafkaStreams.State.NOT_RUNNING) {
        throw new IllegalStateException("Kafka Streams stopped: " + streams.state());
      }
      Thread.sleep(10);
    }
  }

  /** The end offsets of the application's repartition topics. */
  static Map<TopicPartition, Long> repartitionEnds(Admin admin, String appId) throws Exception {
    return endOffsets(admin, admin.listTopics().names().get().stream()
        .filter(t -> t.startsWith(appId + "-") && t.endsWith("-repartition")).toList());
  }

  /** The end offset of every partition of these topics. */
  static Map<TopicPartition, Long> endOffsets(Admin admin, List<String> topics) throws Exception {
    if (topics.isEmpty()) {
      return Map.of();
    }
    Map<TopicPartition, OffsetSpec> latest = new HashMap<>();
    admin.describeTopics(topics).allTopicNames().get().forEach((t, d) -> d.partitions()
        .forEach(p -> latest.put(new TopicPartition(t, p.partition()), OffsetSpec.latest())));
    Map<TopicPartition, Long> end = new HashMap<>();
    admin.listOffsets(latest).all().get().forEach((tp, info) -> end.put(tp, info.offset()));
    return end;
  }

  /** The Nexmark topic of a kind (--nexmark-KIND), decoded, with event time. */
  static <T extends Event> KStream<String, T> nexmark(StreamsBuilder b, Map<String, String> args, String kind, Class<T> type) {
    return b.stream(Args.need(args, "nexmark-" + kind),
            Consumed.with(Serdes.String(), json(type)).withTimestampExtractor(new EventTime()))
        .filter((k, v) -> v != null);
  }

  static Map<String, Object> windowRow(Windowed<String> w, long end, Agg agg, boolean withMax) {
    Map<String, Object> r = row("card_id", w.key(), "window_start", w.window().start(), "window_end", end);
    if (agg == null) {
      r.put("retract", true); // a session merged into another one
    } else {
      r.put("n", agg.n);
      r.put("total", agg.total);
      if (withMax) {
        r.put("max_amount", agg.max);
      }
    }
    return r;
  }

  static Map<String, Object> row(Object... kv) {
    Map<String, Object> m = new java.util.LinkedHashMap<>();
    for (int i = 0; i < kv.length; i += 2) {
      m.put((String) kv[i], kv[i + 1]);
    }
    return m;
  }

  @SuppressWarnings("unchecked")
  static Serde<Map<String, Object>> mapSerde() {
    return (Serde<Map<String, Object>>) (Serde<?>) json(Map.class);
  }
}
