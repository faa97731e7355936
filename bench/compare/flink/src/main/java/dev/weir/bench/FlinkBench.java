package dev.weir.bench;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.core.execution.JobClient;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.table.api.TableResult;
import org.apache.flink.table.api.bridge.java.StreamTableEnvironment;

/**
 * Runs one benchmark query of bench/compare.sh in Flink SQL on a local mini-cluster: Kafka in
 * (from the earliest offset, bounded by the latest offset at start unless --unbounded), JSON
 * events, event time with a 5 s out-of-orderness watermark emitted per event (as Weir judges
 * lateness per row), RocksDB state with incremental checkpoints, and an exactly-once
 * (transactional) Kafka sink committed at each checkpoint.
 *
 * <p>Prints "processed N records in S s (R records/s)", timed from the first record read to
 * the job's end (its final checkpoint committed), as weir-worker does.
 */
public final class FlinkBench {
  private FlinkBench() {}

  public static void main(String[] argv) throws Exception {
    Map<String, String> args = Args.parse(argv);
    String query = Args.need(args, "query");
    String brokers = Args.need(args, "brokers");
    String stateDir = Args.need(args, "state-dir");
    int parallelism = Integer.parseInt(args.getOrDefault("parallelism", "1"));
    long events = Long.parseLong(args.getOrDefault("events", "0"));

    Map<String, String> conf = new HashMap<>();
    conf.put("state.backend.type", "rocksdb");
    conf.put("state.backend.rocksdb.localdir", stateDir + "/rocksdb");
    conf.put("execution.checkpointing.dir", "file://" + stateDir + "/checkpoints");
    conf.put("execution.checkpointing.incremental", "true");
    conf.put("execution.checkpointing.interval", args.getOrDefault("checkpoint-interval", "1 s"));
    conf.put("execution.checkpointing.mode", "EXACTLY_ONCE");
    conf.put("parallelism.default", Integer.toString(parallelism));
    conf.put("taskmanager.numberOfTaskSlots", Integer.toString(parallelism));
    conf.put("taskmanager.memory.managed.size", args.getOrDefault("managed-memory", "256m"));
    conf.put("io.tmp.dirs", stateDir + "/tmp");
    conf.put("pipeline.object-reuse", "true");
    conf.put("table.local-time-zone", "UTC");
    conf.put("metrics.reporter.first.factory.class", FirstRecordReporter.Factory.class.getName());
    StreamExecutionEnvironment env =
        StreamExecutionEnvironment.getExecutionEnvironment(Configuration.fromMap(conf));
    StreamTableEnvironment tEnv = StreamTableEnvironment.create(env);

    Queries q = new Queries(brokers, args);
    for (String ddl : q.tables(query)) {
      tEnv.executeSql(ddl);
    }
    String insert = q.insert(query);
    if (args.containsKey("explain")) {
      System.out.println(tEnv.explainSql(insert));
      return;
    }
    long submitted = System.nanoTime();
    TableResult result = tEnv.executeSql(insert);
    JobClient job = result.getJobClient().orElseThrow();
    job.getJobExecutionResult().get();
    long end = System.nanoTime();
    long first = FirstRecordReporter.firstRecordNanos();
    if (first == 0) {
      first = submitted;
    }
    double secs = (end - first) / 1e9;
    System.err.printf(
        "processed %d records in %.3f s (%d records/s); %.3f s from submission%n",
        events, secs, Math.round(events / secs), (end - submitted) / 1e9);
    System.exit(0);
  }


  /** The DDL and the INSERT of each query. */
  static final class Queries {
    private final String brokers;
    private final Map<String, String> args;

    Queries(String brokers, Map<String, String> args) {
      this.brokers = brokers;
      this.args = args;
    }

    /** A payments table: the fields the queries use (+ extra columns), event time from `ts`. */
    private String source(String table, String topic, String extraColumns) {
      return eventTable(table, topic,
          " id STRING, card_id STRING, merchant_id STRING, amount DOUBLE, status STRING,"
              + " country STRING," + extraColumns);
    }

    /** A table of JSON events with these columns and `ts` (epoch ms) as event time, 5 s out of order. */
    private String eventTable(String table, String topic, String columns) {
      return kafkaTable(table, topic,
          columns + " ts BIGINT,\n"
              + " et AS TO_TIMESTAMP_LTZ(ts, 3),\n"
              + " WATERMARK FOR et AS et - INTERVAL '5' SECOND",
          "'scan.watermark.emit.strategy' = 'on-event',\n"
              + " 'format' = 'json', 'json.ignore-parse-errors' = 'true'");
    }

    private String nexmarkTable(String kind) {
      String topic = Args.need(args, "nexmark-" + kind);
      return switch (kind) {
        case "persons" -> eventTable("persons", topic, " id BIGINT, name STRING, city STRING, state STRING,");
        case "auctions" -> eventTable("auctions", topic, " id BIGINT, seller BIGINT, category BIGINT,");
        default -> eventTable("bids", topic, " auction BIGINT, bidder BIGINT, price BIGINT,");
      };
    }

    /** A Kafka table read from the earliest offset (upsert-kafka always is). */
    private String kafkaTable(String table, String topic, String columns, String options) {
      return kafkaTable("kafka", table, topic, columns,
          "'scan.startup.mode' = 'earliest-offset',\n " + options);
    }

    private String kafkaTable(String connector, String table, String topic, String columns, String options) {
      String bounded = args.containsKey("unbounded") ? "" : " 'scan.bounded.mode' = 'latest-offset',\n";
      return "CREATE TABLE " + table + " (\n" + columns + "\n) WITH (\n"
          + " 'connector' = '" + connector + "', 'topic' = '" + topic + "',\n"
          + " 'properties.bootstrap.servers' = '" + brokers + "',\n"
          + " 'properties.group.id' = 'flink-bench-" + table + "-" + System.nanoTime() + "',\n"
          + bounded + " " + options + "\n"
          + ")";
    }

    private String sink(String columns) {
      return sink(columns, "'format' = 'json', 'json.timestamp-format.standard' = 'ISO-8601'");
    }

    private String sink(String columns, String format) {
      String out = Args.need(args, "output");
      return "CREATE TABLE out_topic (" + columns + ") WITH (\n"
          + " 'connector' = 'kafka', 'topic' = '" + out + "',\n"
          + " 'properties.bootstrap.servers' = '" + brokers + "',\n"
          + " 'properties.transaction.timeout.ms' = '900000',\n"
          + " 'properties.compression.type' = 'lz4',\n"
          + " 'sink.delivery-guarantee' = 'exactly-once',\n"
          + " 'sink.transactional-id-prefix' = 'flink-bench-" + out + "-" + System.nanoTime() + "',\n"
          + " " + format + "\n"
          + ")";
    }

    private static final String WINDOW_OUT =
        "card_id STRING, window_start TIMESTAMP(3), window_end TIMESTAMP(3), n BIGINT, total DOUBLE";

    List<String> tables(String query) {
      String input = Args.need(args, "input");
      List<String> ddl = new ArrayList<>();
      switch (query) {
        case "passthrough" -> {
          // Each event unchanged: the bytes are copied, as Weir and Kafka Streams do.
          ddl.add(kafkaTable("payments", input, " event STRING", "'format' = 'raw'"));
          ddl.add(sink("event STRING", "'format' = 'raw'"));
        }
        case "filter_project" -> {
          ddl.add(source("payments", input, ""));
          ddl.add(sink("id STRING, card_id STRING, amount DOUBLE, ts BIGINT"));
        }
        case "latency" -> {
          ddl.add(source("payments", input, " sent_ms BIGINT,"));
          ddl.add(sink("id STRING, card_id STRING, sent_ms BIGINT"));
        }
        case "tumbling_1m" -> {
          ddl.add(source("payments", input, ""));
          ddl.add(sink(WINDOW_OUT + ", max_amount DOUBLE"));
        }
        case "sliding_5m_1m", "session_2m" -> {
          ddl.add(source("payments", input, ""));
          ddl.add(sink(WINDOW_OUT));
        }
        case "join_1to1" -> {
          ddl.add(source("payments", input, ""));
          ddl.add(source("captures", args.getOrDefault("input2", input), ""));
          ddl.add(sink("id STRING, card_id STRING, amount DOUBLE, captured BIGINT"));
        }
        case "enrich" -> {
          ddl.add(source("payments", input, ""));
          // The compacted topic as a versioned table; payments see it as of their event time.
          ddl.add(kafkaTable("upsert-kafka", "merchants", Args.need(args, "table"),
              " merchant_id STRING, category STRING, country STRING, ts BIGINT,\n"
                  + " et AS TO_TIMESTAMP_LTZ(ts, 3),\n"
                  + " WATERMARK FOR et AS et,\n"
                  + " PRIMARY KEY (merchant_id) NOT ENFORCED",
              "'key.format' = 'raw', 'value.format' = 'json'"));
          ddl.add(sink("id STRING, card_id STRING, merchant_id STRING, amount DOUBLE, status STRING,"
              + " country STRING, ts BIGINT, merchant_category STRING, merchant_country STRING"));
        }
        case "fraud_pattern" -> {
          ddl.add(source("payments", input, ""));
          ddl.add(sink("card_id STRING, last_probe STRING, hit_amount DOUBLE, hit_ts BIGINT"));
        }
        case "nexmark_q3" -> {
          ddl.add(nexmarkTable("auctions"));
          // The persons topic as a versioned table (its key is the id as text); auctions see
          // it as of their event time.
          ddl.add(kafkaTable("upsert-kafka", "persons", Args.need(args, "nexmark-persons"),
              " k_id STRING, name STRING, city STRING, state STRING, ts BIGINT,\n"
                  + " et AS TO_TIMESTAMP_LTZ(ts, 3),\n"
                  + " WATERMARK FOR et AS et,\n"
                  + " PRIMARY KEY (k_id) NOT ENFORCED",
              "'key.format' = 'raw', 'key.fields-prefix' = 'k_',\n"
                  + " 'value.format' = 'json', 'value.fields-include' = 'EXCEPT_KEY'"));
          ddl.add(sink("name STRING, city STRING, state STRING, id BIGINT"));
        }
        case "nexmark_q8" -> {
          ddl.add(nexmarkTable("persons"));
          ddl.add(nexmarkTable("auctions"));
          ddl.add(sink("person_id BIGINT, name STRING, auction_id BIGINT, window_start TIMESTAMP(3)"));
        }
        case "nexmark_auction_bids" -> {
          ddl.add(nexmarkTable("auctions"));
          ddl.add(nexmarkTable("bids"));
          ddl.add(sink("auction BIGINT, seller BIGINT, category BIGINT, bidder BIGINT, price BIGINT,"
              + " bid_ts BIGINT"));
        }
        default -> throw new IllegalArgumentException("unknown query " + query);
      }
      return ddl;
    }

    String insert(String query) {
      String window = "GROUP BY card_id, window_start, window_end";
      return "INSERT INTO out_topic " + switch (query) {
        case "passthrough" -> "SELECT event FROM payments";
        case "filter_project" ->
            "SELECT id, card_id, amount, ts FROM payments WHERE amount > 100 AND status = 'approved'";
        case "latency" -> "SELECT id, card_id, sent_ms FROM payments WHERE status = 'approved'";
        case "tumbling_1m" ->
            "SELECT card_id, window_start, window_end, COUNT(*), SUM(amount), MAX(amount)"
                + " FROM TABLE(TUMBLE(TABLE payments, DESCRIPTOR(et), INTERVAL '1' MINUTE)) " + window;
        case "sliding_5m_1m" ->
            "SELECT card_id, window_start, window_end, COUNT(*), SUM(amount) FROM TABLE(HOP(TABLE"
                + " payments, DESCRIPTOR(et), INTERVAL '1' MINUTE, INTERVAL '5' MINUTE)) " + window;
        case "session_2m" ->
            "SELECT card_id, window_start, window_end, COUNT(*), SUM(amount) FROM TABLE(SESSION(TABLE"
                + " payments PARTITION BY card_id, DESCRIPTOR(et), INTERVAL '2' MINUTE)) " + window;
        case "join_1to1" ->
            "SELECT p.id, p.card_id, p.amount, c.ts FROM payments p, captures c WHERE p.id = c.id"
                + " AND c.et BETWEEN p.et - INTERVAL '10' SECOND AND p.et + INTERVAL '10' SECOND";
        case "enrich" ->
            "SELECT p.id, p.card_id, p.merchant_id, p.amount, p.status, p.country, p.ts,"
                + " m.category, m.country FROM payments AS p LEFT JOIN merchants"
                + " FOR SYSTEM_TIME AS OF p.et AS m ON p.merchant_id = m.merchant_id";
        case "fraud_pattern" ->
            "SELECT card_id, last_probe, hit_amount, hit_ts FROM payments MATCH_RECOGNIZE ("
                + " PARTITION BY card_id ORDER BY et"
                + " MEASURES LAST(PROBE.id) AS last_probe, HIT.amount AS hit_amount, HIT.ts AS hit_ts"
                + " ONE ROW PER MATCH AFTER MATCH SKIP PAST LAST ROW"
                + " PATTERN (PROBE{3} HIT) WITHIN INTERVAL '5' MINUTE"
                + " DEFINE PROBE AS PROBE.amount < 10, HIT AS HIT.amount > 200)";
        // Nexmark query 3 (local item suggestion), the persons read as a table.
        case "nexmark_q3" ->
            "SELECT p.name, p.city, p.state, a.id FROM auctions AS a JOIN persons"
                + " FOR SYSTEM_TIME AS OF a.et AS p ON CAST(a.seller AS STRING) = p.k_id"
                + " WHERE a.category = 10 AND p.state IN ('OR', 'ID', 'CA')";
        // Nexmark query 8 (new users who opened an auction in the same 10 s), one row per
        // auction, as a window join.
        case "nexmark_q8" ->
            "SELECT p.id, p.name, a.id, p.window_start FROM"
                + " (SELECT * FROM TABLE(TUMBLE(TABLE persons, DESCRIPTOR(et), INTERVAL '10' SECOND))) p"
                + " JOIN (SELECT * FROM TABLE(TUMBLE(TABLE auctions, DESCRIPTOR(et), INTERVAL '10' SECOND))) a"
                + " ON p.id = a.seller AND p.window_start = a.window_start AND p.window_end = a.window_end";
        // The bids of each auction's first minute (an interval join).
        case "nexmark_auction_bids" ->
            "SELECT a.id, a.seller, a.category, b.bidder, b.price, b.ts FROM auctions a, bids b"
                + " WHERE a.id = b.auction AND b.et BETWEEN a.et AND a.et + INTERVAL '1' MINUTE";
        default -> throw new IllegalArgumentException("unknown query " + query);
      };
    }
  }
}
