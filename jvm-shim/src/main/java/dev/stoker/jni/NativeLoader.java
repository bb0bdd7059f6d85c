package dev.stoker.jni;

import dev.stoker.StokerException;
import java.io.IOException;
import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;

/**
 * Loads libstoker_jni once per JVM: first from java.library.path
 * ({@code System.loadLibrary}), then from the copy bundled in the jar. A failure is
 * remembered and reported, with its reasons, when native code is first used, never
 * from a static initializer (which would surface as an opaque
 * NoClassDefFoundError).
 */
public final class NativeLoader {
  static final String LIBRARY = "stoker_jni";
  static final String RESOURCE = "/dev/stoker/native/linux-x86_64/libstoker_jni.so";

  private static volatile boolean loaded;
  private static volatile String failure;

  private NativeLoader() {}

  /** Loads the library if needed; throws StokerException saying why it cannot be. */
  public static void ensureLoaded() {
    if (loaded) {
      return;
    }
    synchronized (NativeLoader.class) {
      if (loaded) {
        return;
      }
      if (failure != null) {
        throw new StokerException(failure);
      }
      StringBuilder reasons = new StringBuilder();
      String explicit = System.getProperty("stoker.native.lib");
      if (explicit != null && tryLoad(explicit, reasons)) {
        return;
      }
      try {
        System.loadLibrary(LIBRARY);
        loaded = true;
        return;
      } catch (UnsatisfiedLinkError e) {
        reasons.append("System.loadLibrary(\"").append(LIBRARY).append("\"): ")
            .append(e.getMessage()).append("; ");
      }
      try {
        Path copy = extractBundled();
        if (tryLoad(copy.toString(), reasons)) {
          return;
        }
      } catch (IOException | RuntimeException e) {
        reasons.append("bundled library: ").append(e.getMessage());
      }
      failure = "could not load the stoker native library (" + reasons + ")";
      throw new StokerException(failure);
    }
  }

  private static boolean tryLoad(String path, StringBuilder reasons) {
    try {
      System.load(path);
      loaded = true;
      return true;
    } catch (UnsatisfiedLinkError e) {
      reasons.append(path).append(": ").append(e.getMessage()).append("; ");
      return false;
    }
  }

  /**
   * Copies the bundled library to a file of its own. Each JVM gets a fresh temp file,
   * written completely before it is loaded, so executors starting together on one node
   * never load a half-written library.
   */
  private static Path extractBundled() throws IOException {
    try (InputStream in = NativeLoader.class.getResourceAsStream(RESOURCE)) {
      if (in == null) {
        throw new IOException("not in the jar at " + RESOURCE);
      }
      Path dir = Files.createTempDirectory("stoker-jni-");
      Path target = dir.resolve("libstoker_jni.so");
      Files.copy(in, target, StandardCopyOption.REPLACE_EXISTING);
      target.toFile().deleteOnExit();
      dir.toFile().deleteOnExit();
      return target;
    }
  }
}
