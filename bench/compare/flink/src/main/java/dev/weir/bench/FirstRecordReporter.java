package dev.weir.bench;

import java.util.List;
import java.util.Properties;
import java.util.concurrent.CopyOnWriteArrayList;
import org.apache.flink.metrics.Counter;
import org.apache.flink.metrics.Metric;
import org.apache.flink.metrics.MetricConfig;
import org.apache.flink.metrics.MetricGroup;
import org.apache.flink.metrics.reporter.MetricReporter;
import org.apache.flink.metrics.reporter.MetricReporterFactory;

/**
 * Notes when the job's first record is read: every operator's record counters are watched
 * (from a thread polling every millisecond) and the first time any of them is non-zero is kept.
 * This is how the benchmark measures Flink from its first record read, as Weir reports itself,
 * without touching the query's plan.
 */
public final class FirstRecordReporter implements MetricReporter {
  private static final List<Counter> COUNTERS = new CopyOnWriteArrayList<>();
  private static volatile long firstNanos = 0;
  private static Thread watcher;

  /** System.nanoTime() when the first record was seen, or 0 while none was. */
  public static long firstRecordNanos() {
    return firstNanos;
  }

  /** Starts the watcher once; it stops when it has seen a record. */
  static synchronized void startWatching() {
    if (watcher != null) {
      return;
    }
    watcher = new Thread(() -> {
      while (firstNanos == 0) {
        for (Counter c : COUNTERS) {
          if (c.getCount() > 0) {
            firstNanos = System.nanoTime();
            return;
          }
        }
        try {
          Thread.sleep(1);
        } catch (InterruptedException e) {
          return;
        }
      }
    }, "first-record-watcher");
    watcher.setDaemon(true);
    watcher.start();
  }

  @Override
  public void open(MetricConfig config) {
    startWatching();
  }

  @Override
  public void close() {}

  @Override
  public void notifyOfAddedMetric(Metric metric, String name, MetricGroup group) {
    if (metric instanceof Counter c && (name.equals("numRecordsOut") || name.equals("numRecordsIn"))) {
      COUNTERS.add(c);
    }
  }

  @Override
  public void notifyOfRemovedMetric(Metric metric, String name, MetricGroup group) {}

  /** Named in the configuration as `metrics.reporter.first.factory.class`. */
  public static final class Factory implements MetricReporterFactory {
    @Override
    public MetricReporter createMetricReporter(Properties properties) {
      return new FirstRecordReporter();
    }
  }
}
