package persona.opensearch;

import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Collection;
import java.util.Collections;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.opensearch.analysis.common.CommonAnalysisPlugin;
import org.opensearch.common.settings.Settings;
import org.opensearch.env.Environment;
import org.opensearch.index.mapper.MapperExtrasPlugin;
import org.opensearch.ingest.common.IngestCommonPlugin;
import org.opensearch.node.InternalSettingsPreparer;
import org.opensearch.node.Node;
import org.opensearch.painless.PainlessPlugin;
import org.opensearch.plugins.Plugin;
import org.opensearch.transport.Netty4Plugin;

/**
 * Runs one OpenSearch node in this JVM, bound to loopback only.
 *
 * <p>Usage: {@code Main HOME HTTP_PORT TRANSPORT_PORT [NODE_NAME CLUSTER_TRANSPORT_PORTS CLUSTER_NODE_NAMES]}.
 * Data goes to HOME/data, logs to HOME/logs. Alone, the node is a single-node cluster; with the three
 * extra arguments it is one node of a cluster on loopback: it finds the others on the comma-separated
 * transport ports, and the comma-separated names are the cluster-manager-eligible nodes that bootstrap it.
 * The modules that a distribution would load from its modules/ folder are passed to the node as
 * classpath plugins instead. SIGTERM closes the node cleanly (the JVM runs the shutdown hook).
 */
public final class Main {

    /** Node's constructor that takes classpath plugins is protected: open it up. */
    private static final class EmbeddedNode extends Node {
        EmbeddedNode(Environment environment, Collection<Class<? extends Plugin>> plugins) {
            super(environment, plugins, true);
        }
    }

    private Main() {}

    public static void main(String[] args) throws Exception {
        if (args.length != 3 && args.length != 6) {
            System.err.println(
                "usage: Main HOME HTTP_PORT TRANSPORT_PORT [NODE_NAME CLUSTER_TRANSPORT_PORTS CLUSTER_NODE_NAMES]");
            System.exit(2);
        }
        Path home = Paths.get(args[0]).toAbsolutePath();
        int httpPort = Integer.parseInt(args[1]);
        int transportPort = Integer.parseInt(args[2]);
        Path config = home.resolve("config");
        Files.createDirectories(config);
        Files.createDirectories(home.resolve("data"));
        Files.createDirectories(home.resolve("logs"));

        Settings.Builder builder = Settings.builder()
            .put("path.home", home.toString())
            .put("path.data", home.resolve("data").toString())
            .put("path.logs", home.resolve("logs").toString())
            .put("cluster.name", "persona-services")
            .put("node.name", "persona-node")
            .put("network.host", "127.0.0.1")
            .put("http.port", httpPort)
            .put("transport.port", transportPort)
            .put("http.type", "netty4")
            .put("transport.type", "netty4")
            // A throwaway node: never refuse writes because the shared disk looks full.
            .put("cluster.routing.allocation.disk.threshold_enabled", false);
        if (args.length == 6) {
            List<String> seeds = new ArrayList<>();
            for (String port : args[4].split(",")) {
                seeds.add("127.0.0.1:" + port.trim());
            }
            builder.put("node.name", args[3])
                .putList("discovery.seed_hosts", seeds)
                .putList("cluster.initial_cluster_manager_nodes", List.of(args[5].split(",")));
        } else {
            builder.put("discovery.type", "single-node");
        }
        Settings settings = builder.build();

        Environment environment = InternalSettingsPreparer.prepareEnvironment(
            settings, Collections.emptyMap(), config, () -> settings.get("node.name"));
        List<Class<? extends Plugin>> plugins = List.of(
            Netty4Plugin.class, PainlessPlugin.class, CommonAnalysisPlugin.class, MapperExtrasPlugin.class,
            IngestCommonPlugin.class);

        Node node = new EmbeddedNode(environment, plugins);
        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                node.close();
                if (!node.awaitClose(20, TimeUnit.SECONDS)) {
                    System.err.println("persona-opensearch: node did not close within 20s");
                }
            } catch (Exception e) {
                e.printStackTrace();
            } finally {
                stopped.countDown();
            }
        }, "persona-opensearch-shutdown"));

        node.start();
        System.out.println("persona-opensearch: started on http://127.0.0.1:" + httpPort);
        System.out.flush();
        stopped.await();
    }
}
