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
  """Fires once when the ITM loss sits at ln 2 after the warm-up, on whichever of two
  diagnostics trips first:

  - **collapse** (early): in every log window of the last `collapse_steps` post-warm-up
    steps, the ITM loss was no better than chance (>= (1 - tolerance) ln 2: in the band,
    or above it, where a head that is confidently wrong early in a run sits), the logged
    `itm_logit_std` had shrunk to `spread_shrink` x its largest logged value (or below
    `spread_floor`), *and* at least `dead_floor` of the image pooler's units were dead.
    Runs that went on to learn passed through single windows like that just before taking
    off, never through `collapse_steps` of them (docs/plateau.md "The warning");
  - **band**: the ITM loss has stayed within `tolerance` (relative) of ln 2 for
    `window_steps` post-warm-up steps, whatever the diagnostics.

  A log window ending at `step` covers the steps (previous logged step, step]; its mean
  stands for all of them. Steps up to `warmup_steps` never count; a window whose loss
  leaves the band (or, for the early rule, drops below it) resets that rule's count.
  """

  def __init__(self, window_steps: int, tolerance: float, warmup_steps: int = 0,
               start_step: int = 0, collapse_steps: int = 0, spread_shrink: float = 0.5,
               spread_floor: float = 0.01, dead_floor: float = 0.1):
    """window_steps: steps in the band before the band warning (0 = never warn at all);
    tolerance: |itm_loss - ln 2| <= tolerance * ln 2 is in the band; collapse_steps: steps
    of collapsing windows before the early warning (0 = none); dead_floor: the fraction of
    dead image-pooler units that counts as dying; start_step: the step training starts
    (or resumes) from."""
    self.window_steps = int(window_steps)
    self.tolerance = float(tolerance)
    self.warmup_steps = int(warmup_steps)
    self.collapse_steps = int(collapse_steps)
    self.spread_shrink = float(spread_shrink)
    self.spread_floor = float(spread_floor)
    self.dead_floor = float(dead_floor)
    self.fired = False
    self._last_step = int(start_step)
    self._band_start = None      # the in-band run covers steps (_band_start, last step]
    self._collapse_start = None  # the run of collapsing windows, likewise
    self._peak = (0.0, None)     # (largest logged itm_logit_std, its step)

  @classmethod
  def from_config(cls, config, warmup_steps: int, start_step: int = 0):
    """From config.plateau (window_steps, tolerance, collapse_steps, spread_shrink,
    spread_floor, dead_image_floor)."""
    p = config.plateau
    return cls(p.window_steps, p.tolerance, warmup_steps, start_step,
               collapse_steps=p.collapse_steps, spread_shrink=p.spread_shrink,
               spread_floor=p.spread_floor, dead_floor=p.dead_image_floor)

  def in_band(self, itm_loss: float) -> bool:
    return abs(float(itm_loss) - LN2) <= self.tolerance * LN2

  def _collapsed(self, spread: float):
    """Why `spread` counts as collapsed ("" = it does not)."""
    if spread < self.spread_floor:
      return f"itm_logit_std {spread:.3g} < {self.spread_floor:g} (a constant head)"
    peak, at = self._peak
    if spread <= self.spread_shrink * peak:
      return (f"itm_logit_std shrank to {spread:.3g} from {peak:.3g} at step {at} "
              f"(<= {self.spread_shrink:g} x its peak)")
    return ""

  def _run_start(self, run_start, holds: bool, window_start: int):
    """The step before a run of windows where a condition holds: kept while it holds,
    started at this window (never before the warm-up's end), None once it does not."""
    if not holds:
      return None
    return max(window_start, self.warmup_steps) if run_start is None else run_start

  def update(self, step: int, itm_loss: float, itm_logit_std: float | None = None,
             dead_image_pooler: float | None = None):
    """The log window ending at `step` had these means. -> None, or exactly once the
    reason for the warning (a string naming the diagnostic that tripped). The early rule
    needs both `itm_logit_std` and `dead_image_pooler`."""
    start, self._last_step = self._last_step, int(step)
    collapsed = ""
    if itm_logit_std is not None:
      spread = float(itm_logit_std)
      collapsed = self._collapsed(spread)
      if spread > self._peak[0]:
        self._peak = (spread, int(step))
    dying = dead_image_pooler is not None and float(dead_image_pooler) >= self.dead_floor
    if self.window_steps <= 0 or self.fired:
      return None
    post_warmup = step > self.warmup_steps
    at_chance = post_warmup and float(itm_loss) >= (1.0 - self.tolerance) * LN2
    collapsing = bool(at_chance and collapsed and dying)
    self._collapse_start = self._run_start(self._collapse_start, collapsing, start)
    in_band = post_warmup and self.in_band(itm_loss)
    self._band_start = self._run_start(self._band_start, in_band, start)
    if (self.collapse_steps > 0 and collapsing
        and step - self._collapse_start >= self.collapse_steps):
      self.fired = True
      return (f"collapse: for >= {self.collapse_steps} steps after warm-up, itm_loss no "
              f"better than ln 2, {collapsed}, and dead_image_pooler "
              f"{float(dead_image_pooler):.3f} >= {self.dead_floor:g}")
    if in_band and step - self._band_start >= self.window_steps:
      self.fired = True
      return f"band: itm_loss ~ ln 2 for >= {self.window_steps} steps after warm-up"
    return None


def warning_message(step: int, scalars: dict, reason: str) -> str:
  """The one warning line: step, which diagnostic tripped, ITM loss, dead-pooler
  fractions, logit spread, for the early rule what a false alarm looks like, the doc."""
  return (f"ITM plateau at step {step} ({reason}): itm_loss {scalars['itm_loss']:.4f} "
          f"(ln 2 = {LN2:.4f}: the ITM head predicts chance); dead_text_pooler "
          f"{scalars['dead_text_pooler']:.3f}, dead_image_pooler "
          f"{scalars['dead_image_pooler']:.3f}, itm_logit_std "
          f"{scalars['itm_logit_std']:.3g}."
          + (" Stalled runs stay like this; if itm_logit_std grows again within ~100 "
             "steps, the run is taking off (1 of 7 held-out runs that learned tripped this "
             "first)." if reason.startswith("collapse") else "")
          + f" See {DOC} for what to check and try.")
