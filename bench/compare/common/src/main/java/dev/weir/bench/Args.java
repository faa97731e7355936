package dev.weir.bench;

import java.util.HashMap;
import java.util.Map;

/** The drivers' `--name value` arguments (a flag without a value is "true"). */
public final class Args {
  private Args() {}

  public static Map<String, String> parse(String[] argv) {
    Map<String, String> args = new HashMap<>();
    for (int i = 0; i < argv.length; i++) {
      if (!argv[i].startsWith("--")) {
        throw new IllegalArgumentException("expected --name value, got " + argv[i]);
      }
      String name = argv[i].substring(2);
      if (i + 1 < argv.length && !argv[i + 1].startsWith("--")) {
        args.put(name, argv[++i]);
      } else {
        args.put(name, "true");
      }
    }
    return args;
  }

  public static String need(Map<String, String> args, String name) {
    String v = args.get(name);
    if (v == null) {
      throw new IllegalArgumentException("missing --" + name);
    }
    return v;
  }
}
