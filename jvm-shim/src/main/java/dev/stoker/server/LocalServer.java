package dev.stoker.server;

import dev.stoker.ServerUnavailableException;
import dev.stoker.StokerException;
import dev.stoker.jni.NativeClient;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.channels.FileChannel;
import java.nio.channels.FileLock;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardOpenOption;
import java.nio.file.attribute.PosixFilePermissions;
import java.security.SecureRandom;
import java.util.HexFormat;
import java.util.Optional;
import java.util.Properties;
import java.util.concurrent.TimeUnit;

/**
 * The node's own stoker server, started on first use and shared by every JVM on the
 * node (driver and executors): loopback only, with a random token, found through a
 * run directory guarded by a file lock. Each JVM that uses it registers its pid in the
 * run directory's {@code users/}; the server ({@code stoker serve --users}) stops once
 * none of them is alive, however they ended (an executor killed with SIGKILL leaves no
 * orphan server), and a JVM that exits cleanly stops the server only when no other
 * live JVM uses it. Another JVM that finds it gone starts a new one on its next call.
 *
 * <p>Settings: the run directory is {@code stoker.run.dir} (system property) or
 * {@code STOKER_RUN_DIR}, default {@code <tmpdir>/stoker-<user>}; the binary is
 * {@code stoker.bin} or {@code STOKER_BIN}, default {@code stoker} on the PATH; the
 * device is {@code stoker.device} or {@code STOKER_DEVICE}, default {@code auto}; more
 * {@code stoker serve} options are {@code stoker.server.args} or {@code STOKER_SERVER_ARGS}; the
 * model directory is {@code stoker.model.dir} or {@code STOKER_MODEL_DIR}, default none. Spark
 * passes its {@code spark.stoker.server.*} settings through {@link #configure}, which win
 * over both.
 */
public final class LocalServer {
  /** Where a running server listens and the token it wants. */
  public record Address(String uri, String token) {
    /** Connects a native client to this server. */
    public NativeClient connect() {
      return NativeClient.connect(uri, token);
    }
  }

  private static final long STARTUP_SECONDS = 120;
  private static Process started;
  private static Address known;
  /** This JVM's file in the run directory's {@code users/}, once registered. */
  private static Path registered;
  private static final java.util.Map<String, String> CONFIGURED =
      new java.util.concurrent.ConcurrentHashMap<>();

  private LocalServer() {}

  /**
   * Settings from the application (Spark's {@code spark.stoker.server.bin}, {@code .device},
   * {@code .runDir}), keyed by the system property they replace ({@code stoker.bin},
   * {@code stoker.device}, {@code stoker.run.dir}). Null or empty values are ignored.
   */
  public static void configure(String property, String value) {
    if (value != null && !value.isEmpty()) {
      CONFIGURED.put(property, value);
    }
  }

  private static String setting(String property, String env, String fallback) {
    return Optional.ofNullable(CONFIGURED.get(property))
        .or(() -> Optional.ofNullable(System.getProperty(property)))
        .or(() -> Optional.ofNullable(System.getenv(env)))
        .orElse(fallback);
  }

  static Path runDir() {
    String user = System.getProperty("user.name", "user").replaceAll("[^A-Za-z0-9_.-]", "_");
    // /tmp, not java.io.tmpdir: YARN points java.io.tmpdir into each container, which
    // would give every executor its own server instead of one per node.
    Path tmp = Files.isDirectory(Paths.get("/tmp")) ? Paths.get("/tmp")
        : Paths.get(System.getProperty("java.io.tmpdir"));
    return Paths.get(setting("stoker.run.dir", "STOKER_RUN_DIR",
        tmp.resolve("stoker-" + user).toString()));
  }

  /** The node's server, started if no live one is found. */
  public static synchronized Address ensure() {
    if (known != null && alive(known)) {
      return known;
    }
    // Asked once: a server that did not answer just now is not asked again below.
    Address silent = known;
    Path dir = runDir();
    try {
      Files.createDirectories(dir);
      try (FileChannel channel = FileChannel.open(dir.resolve("server.lock"),
          StandardOpenOption.CREATE, StandardOpenOption.WRITE)) {
        // Held while we look and start, so JVMs on one node start one server.
        FileLock lock = channel.lock();
        try {
          Path info = dir.resolve("server.properties");
          Optional<Address> existing = read(info);
          if (existing.isPresent() && !existing.get().equals(silent) && alive(existing.get())) {
            register(dir);
            known = existing.get();
            return known;
          }
          stopSilent(info);
          register(dir);
          known = start(dir);
          return known;
        } finally {
          lock.release();
        }
      }
    } catch (IOException e) {
      throw new ServerUnavailableException(
          "could not start or find the local stoker server in " + dir + ": " + e.getMessage());
    }
  }

  /**
   * The node's server if one is running, without starting one: for clean-up, where a
   * node without a server has nothing to clean.
   */
  public static synchronized Optional<Address> running() {
    if (known != null && alive(known)) {
      return Optional.of(known);
    }
    try {
      Optional<Address> existing = read(runDir().resolve("server.properties"));
      return existing.filter(LocalServer::alive);
    } catch (IOException e) {
      return Optional.empty();
    }
  }

  /**
   * Registers this JVM as a user of the node's server (before the server is started,
   * so a new server never finds no user), and forgets it again at exit.
   */
  private static void register(Path dir) throws IOException {
    if (registered != null && Files.exists(registered)) {
      return;
    }
    Path users = Files.createDirectories(dir.resolve("users"));
    Path mine = users.resolve(Long.toString(ProcessHandle.current().pid()));
    Files.writeString(mine, "jvm\n");
    if (registered == null) {
      Runtime.getRuntime().addShutdownHook(new Thread(LocalServer::stop, "stoker-server-stop"));
    }
    registered = mine;
  }

  /** Whether a process other than this one that uses the node's server is alive. */
  private static boolean otherUsers(Path users) {
    long me = ProcessHandle.current().pid();
    try (var files = Files.list(users)) {
      return files.map(f -> f.getFileName().toString())
          .filter(n -> n.matches("\\d+"))
          .mapToLong(Long::parseLong)
          .anyMatch(pid -> pid != me
              && ProcessHandle.of(pid).map(ProcessHandle::isAlive).orElse(false));
    } catch (IOException e) {
      return false;
    }
  }

  private static boolean alive(Address address) {
    try (NativeClient client = address.connect()) {
      return client.health().contains("\"serving\"");
    } catch (StokerException e) {
      return false;
    }
  }

  /**
   * Kills the recorded server if its process still runs although it did not answer (stopped
   * with SIGSTOP, or wedged): a replacement is about to be started, and the silent one must
   * not come back later holding its memory and a port. Only a process whose command is the
   * stoker binary is killed, so a reused pid of an unrelated process is left alone.
   */
  private static void stopSilent(Path info) {
    Properties p = new Properties();
    try (var in = Files.newBufferedReader(info, StandardCharsets.UTF_8)) {
      p.load(in);
    } catch (IOException e) {
      return;
    }
    long pid;
    try {
      pid = Long.parseLong(p.getProperty("pid", ""));
    } catch (NumberFormatException e) {
      return;
    }
    ProcessHandle.of(pid)
        .filter(ProcessHandle::isAlive)
        .filter(h -> h.info().command().map(c -> c.endsWith("stoker")).orElse(false))
        .ifPresent(h -> {
          System.err.println("stoker: the node's server (pid " + pid + ") is running but did"
              + " not answer within the liveness timeout; stopping it and starting another");
          h.destroyForcibly();
        });
  }

  private static Optional<Address> read(Path file) throws IOException {
    if (!Files.exists(file)) {
      return Optional.empty();
    }
    Properties p = new Properties();
    try (var in = Files.newBufferedReader(file, StandardCharsets.UTF_8)) {
      p.load(in);
    }
    String uri = p.getProperty("uri");
    String tokenFile = p.getProperty("token_file");
    if (uri == null || tokenFile == null || !Files.exists(Paths.get(tokenFile))) {
      return Optional.empty();
    }
    return Optional.of(new Address(uri, Files.readString(Paths.get(tokenFile)).trim()));
  }

  private static Address start(Path dir) throws IOException {
    byte[] random = new byte[32];
    new SecureRandom().nextBytes(random);
    String token = HexFormat.of().formatHex(random);
    Path tokenFile = dir.resolve("token");
    Files.deleteIfExists(tokenFile);
    Files.createFile(tokenFile, PosixFilePermissions.asFileAttribute(
        PosixFilePermissions.fromString("rw-------")));
    Files.writeString(tokenFile, token);
    String bin = setting("stoker.bin", "STOKER_BIN", "stoker");
    String device = setting("stoker.device", "STOKER_DEVICE", "auto");
    Path log = dir.resolve("server.log");
    java.util.List<String> command = new java.util.ArrayList<>(java.util.List.of(bin, "serve",
        "--host", "127.0.0.1", "--port", "0", "--token-file", tokenFile.toString(),
        "--device", device, "--users", dir.resolve("users").toString()));
    // More `stoker serve` options (e.g. --cache-mb 16384), space-separated.
    String extra = setting("stoker.server.args", "STOKER_SERVER_ARGS", "").trim();
    if (!extra.isEmpty()) {
      command.addAll(java.util.Arrays.asList(extra.split("\\s+")));
    }
    // The registry's disk tier (Spark gives one under its local directories), unless
    // the options name their own.
    String modelDir = setting("stoker.model.dir", "STOKER_MODEL_DIR", "");
    if (!modelDir.isEmpty() && !command.contains("--model-dir")) {
      command.add("--model-dir");
      command.add(modelDir);
    }
    Process process = new ProcessBuilder(command)
        .redirectError(ProcessBuilder.Redirect.appendTo(log.toFile()))
        .start();
    String uri = firstLine(process, STARTUP_SECONDS);
    if (uri == null || !uri.startsWith("grpc")) {
      process.destroy();
      throw new ServerUnavailableException("the stoker server (" + bin
          + ") did not start within " + STARTUP_SECONDS + " s; see " + log);
    }
    Properties p = new Properties();
    p.setProperty("uri", uri);
    p.setProperty("token_file", tokenFile.toString());
    p.setProperty("pid", Long.toString(process.pid()));
    Path info = dir.resolve("server.properties");
    Path tmp = dir.resolve("server.properties.tmp");
    try (var w = Files.newBufferedWriter(tmp, StandardCharsets.UTF_8)) {
      p.store(w, "stoker local server");
    }
    Files.move(tmp, info, java.nio.file.StandardCopyOption.REPLACE_EXISTING,
        java.nio.file.StandardCopyOption.ATOMIC_MOVE);
    started = process;
    return new Address(uri, token);
  }

  /**
   * The server's first output line (its address), or null if it exits or says nothing
   * in time: a server stuck starting (e.g. in CUDA init) must not hold the node's lock
   * forever.
   */
  private static String firstLine(Process process, long seconds) {
    java.util.concurrent.CompletableFuture<String> line =
        java.util.concurrent.CompletableFuture.supplyAsync(() -> {
          try {
            return new BufferedReader(new InputStreamReader(process.getInputStream(),
                StandardCharsets.UTF_8)).readLine();
          } catch (IOException e) {
            return null;
          }
        });
    try {
      return line.get(seconds, TimeUnit.SECONDS);
    } catch (java.util.concurrent.TimeoutException | java.util.concurrent.ExecutionException e) {
      return null;
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      return null;
    }
  }

  /**
   * Forgets this JVM as a user, and stops the server if this JVM started it and no
   * other live JVM uses it (SIGTERM: it drains and exits). A server others still use
   * stops by itself when its last user is gone.
   */
  public static synchronized void stop() {
    if (registered != null) {
      try {
        Files.deleteIfExists(registered);
      } catch (IOException e) {
        // The server forgets a dead pid by itself.
      }
    }
    if (started == null) {
      return;
    }
    if (registered != null && otherUsers(registered.getParent())) {
      started = null;
      known = null;
      return;
    }
    started.destroy();
    try {
      started.waitFor(30, TimeUnit.SECONDS);
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
    }
    started = null;
    known = null;
  }
}
