"""The LASeR loop, runnable: a causal LM trained by TRL's GRPOTrainer, its reward model chosen per
prompt by laser-router, the bandit learning from what each training step did.

    # in the project's trainer environment (scripts/test-trainers.sh builds it):
    python examples/laser_trl.py --spawn --steps 24 --plot laser_trl.png

--spawn starts the server binary (target/release or target/debug) on the embedded default
config: the three demo RMs (satisfaction, caution, detail; scripts/demo-models.sh builds them)
and the demo MiniLM encoder, which gives each prompt its context. Without --spawn it talks to a
server at --address. The policy is a small randomly initialised Llama over the demo tokenizer
(no model hub); --model takes a local Hugging Face model directory instead. Real RMs are the
server's business: add them to its config or with Admin/AddRewardModel, and name them in
--reward-models. docs/trainers.md explains the signal and the knobs.

--paper-rms routes between the kinds of RM LASeR itself used, beside a classifier: the demo's
`satisfaction` classifier, a chat LLM scored by the likelihood of the response (`likelihood`) and
the same LLM scored by its implicit DPO reward against a reference model (`dpo`), added through
Admin/AddRewardModel. The LLMs are tiny random Llamas exported here by
scripts/export_causal_lm.py (no model hub), or, with --paper-rms-dir DIR, the folders DIR/policy
and DIR/reference exported by that script from real weights (e.g. Zephyr-7B-beta and its SFT
reference; docs/llm-reward-models.md).

Prints, per generation, which RM each prompt got and the step's logged loss; at the end the
router's per-RM statistics (selections, feedback, mean reward) and the per-RM mean of the
signal the bandit learned from; writes a plot of both over training.
"""

import argparse
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "clients" / "python"))

from laser_router_client import LaserRouterClient  # noqa: E402
from laser_router_client.trl import LaserRouterGRPO  # noqa: E402
from _server import start_server  # noqa: E402  (examples/_server.py)

PROMPTS = [
    "How well did this medication work for your migraines?",
    "Describe the side effects you had on the antidepressant.",
    "Would you recommend this birth control to a friend?",
    "What should someone know before starting this blood pressure pill?",
    "Tell us about your first month on the acne treatment.",
    "How did the sleep aid change your nights?",
    "Did the pain medication help after your surgery?",
    "Explain how you and your doctor adjusted the dose.",
]


def policy(model_path: str, seed: int):
    import torch
    from transformers import (AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM,
                              PreTrainedTokenizerFast)

    if model_path:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return AutoModelForCausalLM.from_pretrained(model_path), tokenizer
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(ROOT / "models" / "demo" / "tokenizer.json"),
                                        bos_token="[CLS]", eos_token="[SEP]", pad_token="[PAD]",
                                        unk_token="[UNK]")
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id))
    return model, tokenizer


def add_paper_rms(client, folder: str) -> list:
    """Add the `likelihood` and `dpo` RMs over the exported LLMs in FOLDER/policy and
    FOLDER/reference (made here when FOLDER is empty); returns the router's RMs."""
    import subprocess

    root = Path(folder or tempfile.mkdtemp(prefix="laser-paper-rms-"))
    for name, seed in (("policy", 1), ("reference", 2)):
        if not (root / name / "model.onnx").exists():
            subprocess.run([sys.executable, str(ROOT / "scripts" / "export_causal_lm.py"), "--tiny-llama",
                            str(seed), str(root / name)], check=True, capture_output=True)
    policy_files = dict(model_path=str(root / "policy" / "model.onnx"),
                        tokenizer_path=str(root / "policy" / "tokenizer.json"), input_format="chat", max_length=512)
    existing = {rm.name for rm in client.list_reward_models()}
    if "likelihood" not in existing:
        client.add_reward_model(name="likelihood", score="log_likelihood", **policy_files)
    if "dpo" not in existing:
        client.add_reward_model(name="dpo", score="implicit", implicit={
            "reference_model_path": str(root / "reference" / "model.onnx"), "beta": 0.1}, **policy_files)
    return ["satisfaction", "likelihood", "dpo"]


def plot(path: str, laser: LaserRouterGRPO, reward_models: list) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted({d["step"] for d in laser.decisions})
    share = {rm: [sum(1 for d in laser.decisions if d["step"] == s and d["reward_model"] == rm)
                  / max(1, sum(1 for d in laser.decisions if d["step"] == s)) for s in steps]
             for rm in reward_models}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.stackplot(steps, *[share[rm] for rm in reward_models], labels=reward_models)
    left.set(xlabel="step (generation)", ylabel="share of prompts", title="RM chosen by the router")
    left.legend(loc="upper right")
    for rm in reward_models:
        points = [(r["scored_at"], r["loss"]) for r in laser.reports if r["reward_model"] == rm]
        if points:
            right.scatter(*zip(*points), label=rm, s=14)
    right.set(xlabel="step the decision was scored", ylabel=f"signal sent ({laser.signal} loss)",
              title="what the bandit learned from, per decision")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", default="127.0.0.1:50051")
    parser.add_argument("--spawn", action="store_true", help="start the server binary on the default config")
    parser.add_argument("--router", default=f"laser-trl-{int(time.time())}")
    parser.add_argument("--reward-models", default="satisfaction,caution,detail")
    parser.add_argument("--model", default="", help="a local Hugging Face causal LM directory")
    parser.add_argument("--paper-rms", action="store_true",
                        help="route between a classifier, a likelihood LLM RM and an implicit-DPO LLM RM")
    parser.add_argument("--paper-rms-dir", default="",
                        help="with --paper-rms: folders policy/ and reference/ from scripts/export_causal_lm.py")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--signal", choices=["dpo", "loss"], default="dpo")
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--prompts-per-step", type=int, default=4)
    parser.add_argument("--max-completion-length", type=int, default=24)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--alpha", type=float, default=None, help="LinUCB's exploration (server default 1)")
    parser.add_argument("--plot", default="laser_trl.png")
    parser.add_argument("--output-dir", default="")
    args = parser.parse_args()

    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    server = None
    if args.spawn:
        data = tempfile.TemporaryDirectory()
        server, args.address, _ = start_server(data.name)
    try:
        client = LaserRouterClient(args.address)
        reward_models = (add_paper_rms(client, args.paper_rms_dir) if args.paper_rms
                         else args.reward_models.split(","))
        # LinUCB over the server's encoder contexts, with the RMs this run may use.
        extra = {} if args.alpha is None else {"alpha": args.alpha}
        client.create_router(args.router, policy="linucb", reward_models=reward_models, encoder="minilm",
                             seed=args.seed, **extra)
        laser = LaserRouterGRPO(client, router=args.router, signal=args.signal)
        model, tokenizer = policy(args.model, args.seed)
        output_dir = args.output_dir or tempfile.mkdtemp(prefix="laser-trl-")
        config = GRPOConfig(output_dir=output_dir, per_device_train_batch_size=args.prompts_per_step
                            * args.num_generations, num_generations=args.num_generations,
                            max_completion_length=args.max_completion_length, max_steps=args.steps,
                            logging_steps=1, report_to="none", use_cpu=not args.model, save_strategy="no",
                            learning_rate=args.learning_rate, lr_scheduler_type="constant",
                            seed=args.seed, disable_tqdm=True,
                            log_level="warning")
        logged = {}

        class Printer(TrainerCallback):
            def on_log(self, _args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:
                    logged[state.global_step] = float(logs["loss"])

        trainer = GRPOTrainer(model=model, processing_class=tokenizer, reward_funcs=[laser.reward_function],
                              callbacks=[laser.callback, Printer()], args=config,
                              train_dataset=Dataset.from_dict({"prompt": PROMPTS * (args.steps + 1)}))
        trainer.remove_callback(PrinterCallback)  # the table below says what matters
        started = time.time()
        trainer.train()
        elapsed = time.time() - started

        by_step = defaultdict(Counter)
        for d in laser.decisions:
            by_step[d["step"]][d["reward_model"]] += 1
        print(f"{'step':>4}  {'RMs chosen (prompts)':<44} {'logged loss':>12}")
        for step in sorted(by_step):
            chosen = ", ".join(f"{rm} {n}" for rm, n in sorted(by_step[step].items()))
            print(f"{step:>4}  {chosen:<44} {logged.get(step + 1, float('nan')):>12.3g}")
        info = client.get_router(args.router)
        signal = defaultdict(list)
        for r in laser.reports:
            signal[r["reward_model"]].append(r["loss"])
        print(f"\nrouter {args.router}: {len(laser.decisions)} decisions, {info.pending_decisions} pending, "
              f"{elapsed:.1f} s of training")
        print(f"{'RM':<14} {'selections':>10} {'feedback':>9} {'mean reward':>12} {'mean signal':>12}")
        for arm in info.arms:
            values = signal.get(arm.reward_model, [])
            mean = sum(values) / len(values) if values else float("nan")
            print(f"{arm.reward_model:<14} {arm.selections:>10} {arm.feedback_count:>9} "
                  f"{arm.mean_reward:>12.4f} {mean:>12.4f}")
        if args.plot:
            plot(args.plot, laser, reward_models)
            print(f"plot: {args.plot}")
    finally:
        if server is not None:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()
