package dev.stoker.server;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.stoker.UnauthenticatedException;
import dev.stoker.jni.NativeClient;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermission;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.concurrent.Callable;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class LocalServerTest {
  @TempDir Path runDir;

  @BeforeEach
  void settings() {
    System.setProperty("stoker.run.dir", runDir.toString());
    System.setProperty("stoker.device", "cpu");
  }

  @AfterEach
  void cleanUp() {
    LocalServer.stop();
    System.clearProperty("stoker.run.dir");
  }

  @Test
  void startsOnceAndIsSharedWithATokenOnLoopback() throws Exception {
    ExecutorService pool = Executors.newFixedThreadPool(4);
    List<Callable<LocalServer.Address>> calls = List.of(
        LocalServer::ensure, LocalServer::ensure, LocalServer::ensure, LocalServer::ensure);
    Set<LocalServer.Address> seen = new HashSet<>();
    for (Future<LocalServer.Address> f : pool.invokeAll(calls)) {
      seen.add(f.get());
    }
    pool.shutdown();
    assertEquals(1, seen.size(), "one server for the node");
    LocalServer.Address address = seen.iterator().next();
    assertTrue(address.uri().startsWith("grpc://127.0.0.1:"), address.uri());
    assertEquals(64, address.token().length());
    Set<PosixFilePermission> perms = Files.getPosixFilePermissions(runDir.resolve("token"));
    assertEquals(Set.of(PosixFilePermission.OWNER_READ, PosixFilePermission.OWNER_WRITE), perms);

    try (NativeClient client = address.connect()) {
      assertTrue(client.health().contains("\"serving\""));
    }
    try (NativeClient anonymous = NativeClient.connect(address.uri(), null)) {
      assertThrows(UnauthenticatedException.class, anonymous::health);
    }
    assertTrue(!Files.readString(runDir.resolve("server.log")).contains(address.token()),
        "the token never appears in the server's log");
  }

  @Test
  void aStoppedServerIsReplacedOnTheNextCall() {
    LocalServer.Address first = LocalServer.ensure();
    LocalServer.stop();
    LocalServer.Address second = LocalServer.ensure();
    assertNotEquals(first.token(), second.token());
    try (NativeClient client = second.connect()) {
      assertTrue(client.health().contains("\"serving\""));
    }
  }

  @Test
  void aServerAnotherProcessUsesOutlivesThisJvmAndStopsWithItsLastUser() throws Exception {
    LocalServer.ensure();
    Path users = runDir.resolve("users");
    assertTrue(Files.exists(users.resolve(Long.toString(ProcessHandle.current().pid()))),
        "this JVM is registered as a user");
    java.util.Properties info = new java.util.Properties();
    try (var in = Files.newBufferedReader(runDir.resolve("server.properties"))) {
      info.load(in);
    }
    ProcessHandle server = ProcessHandle.of(Long.parseLong(info.getProperty("pid"))).get();
    // Another user (as an executor JVM would be), then this JVM leaves.
    Process other = new ProcessBuilder("sleep", "600").start();
    Files.writeString(users.resolve(Long.toString(other.pid())), "test\n");
    LocalServer.stop();
    Thread.sleep(2500);
    assertTrue(server.isAlive(), "stopped while another process used it");
    // The other user dies without a word (SIGKILL): the server stops by itself.
    other.destroyForcibly().waitFor();
    long deadline = System.nanoTime() + java.util.concurrent.TimeUnit.SECONDS.toNanos(15);
    while (server.isAlive() && System.nanoTime() < deadline) {
      Thread.sleep(100);
    }
    assertTrue(!server.isAlive(), "the server outlived its last user");
  }
}
