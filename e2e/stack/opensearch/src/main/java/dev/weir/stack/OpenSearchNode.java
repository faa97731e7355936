package dev.weir.stack;

import java.nio.file.Path;
import java.util.List;
import java.util.Map;

import org.opensearch.common.logging.LogConfigurator;
import org.opensearch.common.settings.Settings;
import org.opensearch.env.Environment;
import org.opensearch.node.InternalSettingsPreparer;
import org.opensearch.node.Node;
import org.opensearch.transport.Netty4Plugin;

/**
 * A single-node OpenSearch server for the local stack, from the OpenSearch server jars on Maven
 * Central (no distribution archive is served there): the same node code the distribution runs,
 * with its Netty 4 transport and HTTP module loaded from the classpath.
 * Usage: OpenSearchNode HOME HTTP_PORT (the transport port is HTTP_PORT + 100).
 */
public final class OpenSearchNode {
    /** A node whose plugins come from the classpath instead of a plugins folder. */
    static final class Embedded extends Node {
        Embedded(Environment env) {
            super(env, List.of(Netty4Plugin.class), true);
        }
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 2) {
            System.err.println("usage: OpenSearchNode HOME HTTP_PORT");
            System.exit(2);
        }
        Path home = Path.of(args[0]).toAbsolutePath();
        int http = Integer.parseInt(args[1]);
        Settings settings = Settings.builder()
            .put("path.home", home.toString())
            .put("path.data", home.resolve("data").toString())
            .put("path.logs", home.resolve("logs").toString())
            .put("cluster.name", "weir")
            .put("node.name", "weir-0")
            .put("discovery.type", "single-node")
            .put("network.host", "127.0.0.1")
            .put("http.port", http)
            .put("transport.port", http + 100)
            .put("http.type", "netty4")
            .put("transport.type", "netty4")
            // A test stack on a shared disk: never turn indices read-only for disk watermarks.
            .put("cluster.routing.allocation.disk.threshold_enabled", false)
            .build();
        LogConfigurator.configureWithoutConfig(settings);
        Environment env = InternalSettingsPreparer.prepareEnvironment(settings, Map.of(), null, () -> "weir-0");
        Node node = new Embedded(env);
        node.start();
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                node.close();
            } catch (Exception e) {
                e.printStackTrace();
            }
        }));
        System.out.println("OpenSearch node started on 127.0.0.1:" + http);
        Thread.currentThread().join();
    }
}
