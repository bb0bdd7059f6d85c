package dev.stoker.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;
import scala.Option;
import scala.jdk.javaapi.CollectionConverters;

/** The search's scheduler alone: which trial trains to which rung, step by step. */
class AshaTest {
  private static List<Integer> rungs(int min, int max, int eta, boolean halving) {
    List<Integer> out = new ArrayList<>();
    CollectionConverters.asJava(Asha$.MODULE$.rungs(min, max, eta, halving))
        .forEach(r -> out.add((Integer) r));
    return out;
  }

  private static Asha asha(int trials, int eta, List<Integer> rungs) {
    List<Object> boxed = new ArrayList<>(rungs);
    return new Asha(CollectionConverters.asScala(boxed).toSeq(), eta, trials, false);
  }

  @Test
  void rungsAreMinRoundsTimesEtaToTheKThenMaxRounds() {
    assertEquals(List.of(1, 3, 9), rungs(1, 9, 3, true));
    assertEquals(List.of(1, 2, 4, 8), rungs(1, 8, 2, true));
    assertEquals(List.of(2, 6, 10), rungs(2, 10, 3, true));
    assertEquals(List.of(10), rungs(2, 10, 3, false));
    assertEquals(List.of(5), rungs(5, 5, 3, true));
  }

  /**
   * One worker, 16 trials, rungs 1, 2, 4, 8 and eta 2, trial i scoring i (lower is better,
   * so trial 0 is best everywhere): every trial runs rung 0, each rung promotes exactly
   * the top half of the one below once all have reported, and promotions go first.
   */
  @Test
  void sequentialAshaHalvesEachRungAndPromotesBeforeStarting() {
    Asha asha = asha(16, 2, rungs(1, 8, 2, true));
    List<String> steps = new ArrayList<>();
    Option<Asha.Step> next = asha.next();
    while (next.isDefined()) {
      Asha.Step s = next.get();
      steps.add(s.trial() + "@" + s.rung());
      asha.report(s.trial(), s.rung(), s.trial());
      next = asha.next();
    }
    assertTrue(asha.finished());
    assertEquals(List.of(16, 8, 4, 2),
        CollectionConverters.asJava(asha.counts()).stream().map(c -> (Integer) c).toList());
    // After trials 0 and 1 finish rung 0, trial 0 is promoted before trial 2 starts.
    assertEquals(List.of("0@0", "1@0", "0@1", "2@0", "3@0", "1@1", "0@2"),
        steps.subList(0, 7));
    assertEquals(0, asha.best().get()._1());
    assertEquals(3, asha.best().get()._2());
  }

  /**
   * Few trials: 8 with eta 3 leave 2 at rung 1, too few to promote one by the rule, so
   * once nothing runs the best of them goes on to maxRounds.
   */
  @Test
  void aSearchOfFewTrialsStillTrainsOneToTheTopRung() {
    Asha asha = asha(8, 3, rungs(1, 6, 3, true));
    List<String> steps = new ArrayList<>();
    Option<Asha.Step> next = asha.next();
    while (next.isDefined()) {
      Asha.Step s = next.get();
      steps.add(s.trial() + "@" + s.rung());
      asha.report(s.trial(), s.rung(), s.trial());
      next = asha.next();
    }
    assertEquals(List.of(8, 2, 1),
        CollectionConverters.asJava(asha.counts()).stream().map(c -> (Integer) c).toList());
    assertEquals("0@2", steps.get(steps.size() - 1));
    assertEquals(2, asha.best().get()._2());
  }

  /** A trial that fails takes no further part; the rest of the search goes on. */
  @Test
  void aFailedTrialIsLeftOutAndTheSearchFinishes() {
    Asha asha = asha(4, 2, rungs(1, 2, 2, true));
    asha.next(); // trial 0
    asha.fail(0);
    Option<Asha.Step> next = asha.next();
    int steps = 0;
    while (next.isDefined()) {
      asha.report(next.get().trial(), next.get().rung(), 1.0);
      steps++;
      next = asha.next();
    }
    // Trials 1-3 at rung 0, one promotion (top half of 3 is 1).
    assertEquals(4, steps);
    assertTrue(asha.finished());
    assertEquals(0, asha.metrics(0).size());
  }

  /** A trial that fails after a promotion is never the best, though its result counts. */
  @Test
  void aTrialThatFailedIsNeverTheBest() {
    Asha asha = asha(2, 2, rungs(1, 2, 2, true));
    asha.next();
    asha.report(0, 0, 0.1);
    asha.next();
    asha.report(1, 0, 0.5);
    Asha.Step promoted = asha.next().get();
    assertEquals(0, promoted.trial());
    asha.fail(0);
    assertEquals(1, asha.best().get()._1());
    assertEquals(0, asha.best().get()._2());
  }

  /** Two workers: a free worker starts a new trial rather than wait for a rung to fill. */
  @Test
  void aFreeWorkerNeverWaitsForTheSlowestTrial() {
    Asha asha = asha(4, 2, rungs(1, 2, 2, true));
    Asha.Step a = asha.next().get();
    Asha.Step b = asha.next().get();
    assertEquals(0, a.trial());
    assertEquals(1, b.trial());
    asha.report(1, 0, 0.5); // trial 1 finishes first; trial 0 still runs
    Asha.Step c = asha.next().get();
    assertEquals(2, c.trial(), "one result at rung 0 promotes nothing: a new trial starts");
    asha.close();
    assertTrue(asha.next().isEmpty());
    assertTrue(!asha.finished(), "running trials still report");
    asha.report(0, 0, 0.1);
    asha.report(2, 0, 0.9);
    assertTrue(asha.finished());
  }
}
