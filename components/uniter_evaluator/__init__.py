"""The UNITER evaluation gate (a custom TFX component: Spec / Executor / Component)."""
