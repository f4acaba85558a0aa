"""Detects the ITM plateau (docs/plateau.md): the logged ITM loss stuck at ln 2.

Fed the trainer's logged values (means over each log window), never device arrays: a
plain-Python state machine the trainer updates at every log step. One detector per process,
so a run warns at most once per process; its state is not checkpointed (a resumed run
starts counting again from the resumed step).
"""
import math

LN2 = math.log(2.0)          # CE of a 2-way head that outputs the same logits everywhere.
DOC = "docs/plateau.md"


class PlateauDetector:
  """Fires once when the ITM loss stays within `tolerance` (relative) of ln 2 for
  `window_steps` consecutive training steps after the warm-up.

  A log window ending at `step` covers the steps (previous logged step, step]; its mean ITM
  loss stands for all of them. Steps up to `warmup_steps` never count; a window whose
  loss leaves the band resets the count.
  """

  def __init__(self, window_steps: int, tolerance: float, warmup_steps: int = 0,
               start_step: int = 0):
    """window_steps: steps in the band before the warning (0 = never warn); tolerance:
    |itm_loss - ln 2| <= tolerance * ln 2 is in the band; start_step: the step training
    starts (or resumes) from."""
    self.window_steps = int(window_steps)
    self.tolerance = float(tolerance)
    self.warmup_steps = int(warmup_steps)
    self.fired = False
    self._last_step = int(start_step)
    self._band_start = None      # the in-band run covers steps (_band_start, last step]

  @classmethod
  def from_config(cls, config, warmup_steps: int, start_step: int = 0):
    """From config.plateau (window_steps, tolerance)."""
    return cls(config.plateau.window_steps, config.plateau.tolerance, warmup_steps,
               start_step)

  def in_band(self, itm_loss: float) -> bool:
    return abs(float(itm_loss) - LN2) <= self.tolerance * LN2

  def update(self, step: int, itm_loss: float) -> bool:
    """The log window ending at `step` had mean ITM loss `itm_loss`; -> True exactly once:
    at the first log step where the band has held for `window_steps` post-warm-up steps."""
    start, self._last_step = self._last_step, int(step)
    if self.window_steps <= 0 or self.fired:
      return False
    if step <= self.warmup_steps or not self.in_band(itm_loss):
      self._band_start = None
      return False
    if self._band_start is None:
      self._band_start = max(start, self.warmup_steps)
    if step - self._band_start >= self.window_steps:
      self.fired = True
      return True
    return False


def warning_message(step: int, scalars: dict, window_steps: int) -> str:
  """The one warning line: step, ITM loss, dead-pooler fractions, logit spread, the doc."""
  return (f"ITM plateau at step {step}: itm_loss {scalars['itm_loss']:.4f} ~ ln 2 = "
          f"{LN2:.4f} for >= {window_steps} steps after warm-up (the ITM head predicts chance); "
          f"dead_text_pooler {scalars['dead_text_pooler']:.3f}, dead_image_pooler "
          f"{scalars['dead_image_pooler']:.3f}, itm_logit_std "
          f"{scalars['itm_logit_std']:.3g}. See {DOC} for what to try.")
