package dev.stoker.jni;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.stoker.InvalidInputException;
import dev.stoker.StokerException;
import org.junit.jupiter.api.Test;

class NativeBridgeTest {

  @Test
  void nativeLibraryLoadsAndMatchesTheJarVersion() {
    assertEquals(System.getProperty("stoker.version"), NativeBridge.nativeVersion());
  }

  @Test
  void weightedAverageOfTwoStates() {
    byte[] a = StateBytes.single(new float[] {1f, 2f}, 10);
    byte[] b = StateBytes.single(new float[] {3f, 6f}, 30);
    byte[] avg = NativeBridge.average(new byte[][] {a, b}, new double[] {10, 30});
    assertArrayEquals(new float[] {2.5f, 5f}, StateBytes.values(avg), 1e-6f);
  }

  @Test
  void averagingIdenticalStatesIsTheIdentity() {
    byte[] a = StateBytes.single(new float[] {0.1f, -7.25f, 3.3f}, 5);
    byte[] avg = NativeBridge.average(new byte[][] {a, a, a}, new double[] {1, 2, 3});
    assertArrayEquals(new float[] {0.1f, -7.25f, 3.3f}, StateBytes.values(avg), 0f);
  }

  @Test
  void corruptStateIsInvalidInput() {
    byte[] a = StateBytes.single(new float[] {1f}, 1);
    byte[] junk = "not a state".getBytes(java.nio.charset.StandardCharsets.UTF_8);
    InvalidInputException e =
        assertThrows(InvalidInputException.class,
            () -> NativeBridge.average(new byte[][] {a, junk}, new double[] {1, 1}));
    assertTrue(e.getMessage().contains("not a valid stoker state"), e.getMessage());
  }

  @Test
  void shapeMismatchNamesTheTensor() {
    byte[] a = StateBytes.single(new float[] {1f}, 1);
    byte[] b = StateBytes.single(new float[] {1f, 2f}, 1);
    InvalidInputException e =
        assertThrows(InvalidInputException.class,
            () -> NativeBridge.average(new byte[][] {a, b}, new double[] {1, 1}));
    assertTrue(e.getMessage().contains("tensor 'w'"), e.getMessage());
  }

  @Test
  void countMismatchAndNullsAreInvalidInputNotCrashes() {
    byte[] a = StateBytes.single(new float[] {1f}, 1);
    assertThrows(InvalidInputException.class,
        () -> NativeBridge.average(new byte[][] {a}, new double[] {1, 2}));
    assertThrows(InvalidInputException.class,
        () -> NativeBridge.average(new byte[][] {a, null}, new double[] {1, 2}));
    assertThrows(InvalidInputException.class,
        () -> NativeBridge.average(new byte[][] {}, new double[] {}));
  }

  @Test
  void everyStokerExceptionIsARuntimeException() {
    assertTrue(RuntimeException.class.isAssignableFrom(StokerException.class));
    assertTrue(StokerException.class.isAssignableFrom(InvalidInputException.class));
  }
}
