"""RL from execution reward: rollouts -> ideas -> implementations -> trials -> rewards -> update.

    from ideaforge.rl.loop import run_rl
    run_rl("benchmarks/envs/quadratic", "smollm2", steps=4, group=8, dir="runs/rl1")

    from ideaforge.rl.analysis import step_metrics, summary_text   # per-step figures for reports

Stages (generation, execution, update) are records in the campaign store, so a killed
run resumes where it was (`run_rl(None, None, dir=..., resume=True)`). The trainable
policy (torch, transformers, peft: the `rl` extra) is imported only when a run starts.
"""
