"""A Hugging Face causal LM grounded in CLEVR-Robot states and actions.

:class:`GroundedLM` adds four small modules to a causal LM of hidden size ``d``:

- ``state_encoder``: MLP 10 -> d, writes a ball state into a state slot;
- ``action_embedding``: 40 x d table, writes an action into an action slot;
- ``action_head``: the next action's 40 logits at a state slot, read as set by
  ``GroundedLMConfig.action_head`` (:meth:`GroundedLM.action_logits`): ``"hidden"``, a linear map
  of the slot's hidden state; ``"goal"`` (goal first), an MLP over the goal the LM names and the
  slot's ball state;
- ``goal_head`` (``action_head="goal"`` only): d -> 14 logits of the goal's fields (ball A 5, ball
  B 5, direction 4), or with ``goal_clauses=3`` d -> 45 logits of a clause list (ball A 6, the
  sixth ending the list; :mod:`kalm_gen.goal_fields`), read at a goal slot: the first state slot
  of a rollout (the instruction and the initial state before it) and the end of an explanation
  prompt (the trajectory before it);
- ``state_head``: MLP d -> 10, read at action slots: the next state, given the state before the
  action (:meth:`GroundedLM.next_state`, parameterised as set by ``GroundedLMConfig.state_head``);
  with ``state_head`` ``"mlp"`` or ``"relational"`` a push model over the state before and the
  action instead (:mod:`kalm_gen.push_models`), which never sees the LM.

``GroundedLMConfig.num_layers`` keeps only the LM's first decoder layers (the rest are dropped
before LoRA is applied), a lever for speed on a CPU.

The LM is adapted with LoRA (peft) by default, or fully fine-tuned. The forward pass runs the
LM's decoder once and applies the LM head only at positions with a text target, which saves most
of the cost of a 49k-token vocabulary. :meth:`GroundedLM.save` writes adapter (or full weights),
heads and config together; :meth:`GroundedLM.load` restores exactly what was saved.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn

from kalm_envs.validation import check_choice, check_float, check_int, check_str
from kalm_gen.base_model import resolve_base_model
from kalm_gen.explain_head import ExplainHead
from kalm_gen.goal_fields import GOAL_WIDTH, field_sizes, goal_one_hot, named_fields, pursued_clause
from kalm_gen.push_models import PUSH_MODEL_HEADS, build_push_model
from kalm_gen.sequences import ACTION_SLOT, STATE_SCALE, STATE_SLOT, collate

N_ACTIONS = 40
STATE_DIM = 10
STATE_HEADS = ("bounded", "delta", *PUSH_MODEL_HEADS)
ACTION_HEADS = ("hidden", "goal")
GOAL_CLAUSES = (1, 3)
#: Box (m) of the bounded state head: where the walls keep ball centres after a push
#: (:data:`kalm_envs.physics.BALL_X_LIMITS`, ``BALL_Y_LIMITS``; every real state after a push of
#: real-v0 lies within x +-0.479, y -0.179..0.580) plus 5 mm, tiled over the five balls. Initial
#: states may lie outside (resets place balls in x +-0.5, y -0.3..0.5): the first push moves
#: them in, as the simulator's walls do.
BOX_LOW = torch.tensor([-0.485, -0.185] * 5)
BOX_HIGH = torch.tensor([0.485, 0.585] * 5)
_UNREADABLE = (OSError, ValueError, TypeError, KeyError, RuntimeError, SafetensorError)
"""What reading a damaged model folder raises (JSON, config, safetensors and torch errors)."""
_BOX_EDGE = 1e-3  # a state on (or past) the box edge counts as this far inside it (box fraction)
CONFIG_FILE = "grounded_lm.json"
HEADS_FILE = "heads.safetensors"
ADAPTER_DIR = "adapter"
FULL_MODEL_DIR = "model"


@dataclass
class GroundedLMConfig:
    """How a grounded LM is built; saved with it.

    Attributes:
        base_model: ``"smollm2"``, a local model folder or a ``.gguf`` file.
        finetune: ``"lora"`` or ``"full"``.
        lora_rank, lora_alpha, lora_dropout, lora_targets: LoRA settings (peft).
        head_hidden: width of the state encoder's and state head's hidden layer.
        num_layers: keep the LM's first this many decoder layers (None: all of them).
        state_head: ``"bounded"``: the head moves each coordinate in logit space of the box
            the walls leave (:data:`BOX_LOW` .. :data:`BOX_HIGH`), ``next = low + (high - low) *
            sigmoid(logit(u) + out)`` with ``u`` the state's place in the box, so no predicted ball
            can pass a wall and an output of 0 leaves a ball where it is; ``"delta"``: ``next = state + out *``
            :data:`~kalm_gen.sequences.STATE_SCALE`, unbounded (models saved before the field
            existed); ``"mlp"`` and ``"relational"``: bounded as ``"bounded"``, but ``out`` comes
            from a push model (``head_hidden`` wide, :mod:`kalm_gen.push_models`) over the state
            before and the action, not from the LM, fitted on real transitions
            (:func:`kalm_gen.action_fit.fit_state_head`).
        action_head: ``"hidden"``: the action head is linear in the hidden state at a state slot
            (models saved before the field existed); ``"goal"``: goal first, the LM names the
            goal's fields with a goal head and an MLP (``head_hidden`` wide) maps the named goal
            (one-hot, :func:`~kalm_gen.goal_fields.goal_one_hot`) and the ball state to the action.
        goal_clauses: goal first: how many clauses the goal head names, 1 (ball A, ball B,
            direction) or 3 (a clause list, so that pairs and triples of relations can be named;
            the action MLP acts on the first named clause the state does not meet,
            :func:`~kalm_gen.goal_fields.pursued_clause`).
        explain_head: whether the model has an explanation head (:mod:`kalm_gen.explain_head`):
            it names the relation a rollout reached from the hidden state at the end of the
            explain prompt and the relations of the rollout's first and last states; fitted alone
            after grounding (:func:`~kalm_gen.explain_head.fit_explain_head`).
    """

    base_model: str = "smollm2"
    finetune: str = "lora"
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    head_hidden: int = 256
    num_layers: int | None = None
    state_head: str = "bounded"
    action_head: str = "hidden"
    goal_clauses: int = 1
    explain_head: bool = False

    def __post_init__(self) -> None:
        check_str(self.base_model, "base_model")
        check_choice(self.finetune, "finetune", ("lora", "full"))
        for name in ("lora_rank", "lora_alpha", "head_hidden"):
            check_int(getattr(self, name), name, low=1)
        check_float(self.lora_dropout, "lora_dropout", 0.0, 1.0, high_open=True)
        check_choice(self.state_head, "state_head", STATE_HEADS)
        check_choice(self.action_head, "action_head", ACTION_HEADS)
        check_choice(self.goal_clauses, "goal_clauses", GOAL_CLAUSES)
        if self.goal_clauses != 1 and self.action_head != "goal":
            raise ValueError(f"goal_clauses {self.goal_clauses} needs action_head 'goal', not {self.action_head!r}")
        if self.num_layers is not None:
            check_int(self.num_layers, "num_layers", low=1)
        if not isinstance(self.explain_head, bool):
            raise TypeError(f"explain_head {self.explain_head!r} must be a bool")


class ModelError(ValueError):
    """A saved grounded LM's folder is damaged; the message names the folder and the error."""


class GroundedLM(nn.Module):
    """The LM plus state/action encoders and heads. Build with :meth:`from_config` or :meth:`load`."""

    def __init__(self, lm: nn.Module, tokenizer: Any, config: GroundedLMConfig) -> None:
        super().__init__()
        self.lm = lm
        self.tokenizer = tokenizer
        self.config = config
        width = self._causal_lm().config.hidden_size
        self.state_encoder = nn.Sequential(
            nn.Linear(STATE_DIM, config.head_hidden), nn.GELU(), nn.Linear(config.head_hidden, width)
        )
        self.action_embedding = nn.Embedding(N_ACTIONS, width)
        self._build_action_head()
        self._build_state_head()
        self._build_explain_head()

    def _build_state_head(self) -> None:
        """Fresh state head as ``config.state_head`` says."""
        width, hidden = self._causal_lm().config.hidden_size, self.config.head_hidden
        if self.reads_action:
            self.state_head = build_push_model(self.config.state_head, hidden)
        else:
            self.state_head = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, STATE_DIM))

    def _rebuild(self, field_name: str, value: Any, build: Any, seed: int) -> None:
        """Set config ``field_name`` to ``value`` (the config validates it) and ``build()`` the
        heads it shapes anew, seeded; everything else stays as it is."""
        self.config = GroundedLMConfig(**{**asdict(self.config), field_name: value})
        torch.manual_seed(seed)
        build()

    @property
    def reads_action(self) -> bool:
        """Whether the state head is a push model over the state and the action
        (:mod:`kalm_gen.push_models`) rather than a head over the LM's hidden state."""
        return self.config.state_head in PUSH_MODEL_HEADS

    def replace_state_head(self, state_head: str, seed: int = 0) -> None:
        """Switch to ``state_head`` with a new, seeded head; everything else stays as it is."""
        self._rebuild("state_head", state_head, self._build_state_head, seed)

    def _build_action_head(self) -> None:
        """Fresh action head (and goal head, goal first) as ``config.action_head`` says."""
        width, hidden = self._causal_lm().config.hidden_size, self.config.head_hidden
        if self.config.action_head == "goal":
            self._build_goal_head()
            self.action_head = nn.Sequential(
                nn.Linear(GOAL_WIDTH + STATE_DIM, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                nn.Linear(hidden, N_ACTIONS),
            )
        else:
            self.goal_head = None
            self.action_head = nn.Linear(width, N_ACTIONS)

    def _build_explain_head(self) -> None:
        """A fresh explanation head when ``config.explain_head`` says so, frozen: grounding does
        not train it, :func:`~kalm_gen.explain_head.fit_explain_head` does."""
        self.explain_head = None
        if self.config.explain_head:
            self.explain_head = ExplainHead(self._causal_lm().config.hidden_size, self.config.head_hidden)
            self.explain_head.requires_grad_(False)

    def add_explain_head(self, seed: int = 0) -> None:
        """Give the model a new, seeded explanation head; everything else stays as it is."""
        self._rebuild("explain_head", True, self._build_explain_head, seed)

    def _build_goal_head(self) -> None:
        self.goal_head = nn.Linear(self._causal_lm().config.hidden_size, sum(self.goal_field_sizes))

    @property
    def goal_field_sizes(self) -> tuple[int, ...]:
        """Class counts of the fields the goal head names (:func:`~kalm_gen.goal_fields.field_sizes`)."""
        return field_sizes(self.config.goal_clauses)

    def replace_goal_head(self, goal_clauses: int, seed: int = 0) -> None:
        """Goal first: a new, seeded goal head naming ``goal_clauses`` clauses; everything else,
        the fitted action MLP included, stays as it is."""
        if self.goal_head is None:
            raise ValueError("only a goal-first model has a goal head to replace")
        self._rebuild("goal_clauses", goal_clauses, self._build_goal_head, seed)

    def replace_action_head(self, action_head: str, seed: int = 0) -> None:
        """Switch to ``action_head`` (``"hidden"`` or ``"goal"``) with new, seeded heads; the LM,
        its adapter and the state encoder and head stay as they are (a goal-first model started
        from a grounded one)."""
        self._rebuild("action_head", action_head, self._build_action_head, seed)

    @property
    def head_names(self) -> tuple[str, ...]:
        """The modules saved beside the LM: the encoders and heads this model has."""
        return (_HEADS + (("goal_head",) if self.goal_head is not None else ())
                + (("explain_head",) if self.explain_head is not None else ()))

    # --- building, saving, loading --------------------------------------------------------------

    @classmethod
    def from_config(cls, config: GroundedLMConfig, seed: int = 0) -> GroundedLM:
        """A fresh grounded LM: pretrained base, new heads (seeded), LoRA or full fine-tuning."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = resolve_base_model(config.base_model)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        lm = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
        lm = _keep_layers(lm, config.num_layers)
        torch.manual_seed(seed)
        if config.finetune == "lora":
            from peft import LoraConfig, get_peft_model

            lm = get_peft_model(lm, LoraConfig(
                r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                target_modules=list(config.lora_targets), bias="none",
            ))
        return cls(lm, tokenizer, config)

    def save(self, folder: Path) -> None:
        """Write config, heads, and the adapter (LoRA) or the full LM weights into ``folder``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2))
        heads = {f"{name}.{key}": value.detach().cpu().contiguous() for name in self.head_names
                 for key, value in getattr(self, name).state_dict().items()}
        save_file(heads, str(folder / HEADS_FILE))
        if self.config.finetune == "lora":
            self.lm.save_pretrained(folder / ADAPTER_DIR)
        else:
            self.lm.save_pretrained(folder / FULL_MODEL_DIR)
        self.tokenizer.save_pretrained(folder / "tokenizer")

    @classmethod
    def load(cls, folder: Path | str) -> GroundedLM:
        """Restore a model written by :meth:`save` (base weights come from ``base_model``), from
        its folder or by the name of a published model (:mod:`kalm_gen.published`)."""
        from kalm_gen.published import resolve_model

        folder = resolve_model(folder)
        try:
            return cls._load_folder(folder)
        except _UNREADABLE as error:
            raise ModelError(f"{folder} does not hold a readable grounded LM: {type(error).__name__}: "
                             f"{error}") from error

    @classmethod
    def _load_folder(cls, folder: Path) -> GroundedLM:
        """:meth:`load` of a folder; any of :data:`_UNREADABLE` when a file in it is damaged."""
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM, AutoTokenizer

        values = json.loads((folder / CONFIG_FILE).read_text())
        values.setdefault("state_head", "delta")  # saved before bounded heads existed
        values.setdefault("action_head", "hidden")  # saved before goal-first heads existed
        values.setdefault("goal_clauses", 1)  # saved before clause-list goal heads existed
        values.setdefault("explain_head", False)  # saved before explanation heads existed
        config = GroundedLMConfig(**values)
        tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
        if config.finetune == "lora":
            from peft import PeftModel

            base = _keep_layers(AutoModelForCausalLM.from_pretrained(
                resolve_base_model(config.base_model), local_files_only=True, dtype=torch.float32
            ), config.num_layers)
            lm = PeftModel.from_pretrained(base, folder / ADAPTER_DIR, is_trainable=True)
        else:
            lm = AutoModelForCausalLM.from_pretrained(folder / FULL_MODEL_DIR, local_files_only=True, dtype=torch.float32)
        model = cls(lm, tokenizer, config)
        heads = load_file(str(folder / HEADS_FILE))
        for name in model.head_names:
            prefix = f"{name}."
            getattr(model, name).load_state_dict({k[len(prefix):]: v for k, v in heads.items() if k.startswith(prefix)})
        return model

    # --- the forward pass -----------------------------------------------------------------------

    def _causal_lm(self) -> nn.Module:
        """The transformers causal LM inside (under the peft wrapper when LoRA is on)."""
        return self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @property
    def eos_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    def embed(self, token_ids: torch.Tensor, kinds: torch.Tensor, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """``(B, L, d)`` input embeddings: token embeddings at text, encoders at slots."""
        embeddings = self._causal_lm().get_input_embeddings()(token_ids)
        slot_states = self.state_encoder(states)
        slot_actions = self.action_embedding(actions)
        kinds = kinds.unsqueeze(-1)
        embeddings = torch.where(kinds == STATE_SLOT, slot_states, embeddings)
        return torch.where(kinds == ACTION_SLOT, slot_actions, embeddings)

    def decode(self, embeddings: torch.Tensor, attention_mask: torch.Tensor | None, past_key_values: Any = None, position_ids: torch.Tensor | None = None) -> Any:
        """Run the LM's decoder (with LoRA) on embeddings; returns its output with the KV cache."""
        if position_ids is None:
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, -embeddings.shape[1]:]
        return self._causal_lm().get_decoder()(
            inputs_embeds=embeddings, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=past_key_values, use_cache=past_key_values is not None,
        )

    def text_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM-head logits of selected hidden states ``(..., d) -> (..., vocab)``."""
        return self._causal_lm().get_output_embeddings()(hidden)

    def hidden_states(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(B, L, d)`` last hidden states of a collated or packed training batch (see
        :func:`kalm_gen.sequences.collate`): decoded with its ``position_ids`` and no 2D mask, so
        each position attends only to its own sequence."""
        embeddings = self.embed(batch["token_ids"], batch["kinds"], batch["states"], batch["actions"])
        return self.decode(embeddings, None, position_ids=batch["position_ids"]).last_hidden_state

    def goal_slot_hidden(self, sequences: list[Any], batch_size: int) -> torch.Tensor:
        """``(N, d)`` float32 hidden states, on the CPU, at the goal slot of each of ``sequences``
        (:class:`~kalm_gen.sequences.Sequence`, one goal slot each), ``batch_size`` at a time in
        eval mode."""
        hidden = [torch.zeros(0, self._causal_lm().config.hidden_size)]
        with evaluating(self):
            for start in range(0, len(sequences), batch_size):
                batch = to_tensors(collate(sequences[start:start + batch_size]), next(self.parameters()).device)
                hidden.append(self.hidden_states(batch)[batch["goal_slot"].bool()].float().cpu())
        return torch.cat(hidden)

    def name_goal(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """``(..., 3)`` int64 ball A, ball B and direction (``(..., 9)``, a clause list, with
        ``goal_clauses=3``) the goal head names from the hidden state at a goal slot ``(..., d)``;
        None for a model without a goal head."""
        return None if self.goal_head is None else named_fields(self.goal_head(hidden), self.goal_field_sizes)

    def action_logits(self, hidden: torch.Tensor, states: torch.Tensor, goal: torch.Tensor | None) -> torch.Tensor:
        """``(..., 40)`` logits of the next action at state slots: from their hidden states
        ``(..., d)`` (``action_head="hidden"``; ``goal`` unused, may be None), or goal first
        (:meth:`goal_action_logits`) from the slots' ball states and the goal's fields."""
        if self.goal_head is None:
            return self.action_head(hidden)
        if goal is None:
            raise ValueError("a goal-first action head needs the goal's fields")
        return self.goal_action_logits(states.to(hidden.dtype), goal)

    def goal_action_logits(self, states: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """Goal first: ``(..., 40)`` action logits from ball states ``(..., 10)`` (m) and the goal's
        fields, ``(..., 3)`` or one ``(3,)`` for all, int64 (-1: none;
        :func:`~kalm_gen.goal_fields.goal_one_hot`), or clause lists ``(..., 9)``, of which each
        state's pursued clause is acted on (:func:`~kalm_gen.goal_fields.pursued_clause`); no LM
        involved."""
        if goal.shape[-1] != 3:
            goal = pursued_clause(goal.expand(*states.shape[:-1], goal.shape[-1]), states)
        code = goal_one_hot(goal).to(states.dtype).expand(*states.shape[:-1], GOAL_WIDTH)
        return self.action_head(torch.cat([code, states / STATE_SCALE], dim=-1))

    def next_state(self, hidden: torch.Tensor | None, state: torch.Tensor, action: torch.Tensor | None = None) -> torch.Tensor:
        """The predicted next state ``(..., 10)`` (m, float32) from the hidden state at an action
        slot ``(..., d)`` and the state before the action ``(..., 10)`` (m); a push-model state
        head (:attr:`reads_action`) reads the state and the action ``(...,)`` int64 instead of the
        hidden state (which may then be None)."""
        state = state.float()
        if self.reads_action:
            if action is None:
                raise ValueError(f"a {self.config.state_head} state head needs the action")
            out = self.state_head(state, action).float()
        else:
            out = self.state_head(hidden).float()
        if self.config.state_head == "delta":
            return state + out * STATE_SCALE
        low, high = BOX_LOW.to(state.device), BOX_HIGH.to(state.device)
        place = ((state - low) / (high - low)).clamp(_BOX_EDGE, 1 - _BOX_EDGE)
        return low + (high - low) * torch.sigmoid(torch.logit(place) + out)


def _keep_layers(lm: nn.Module, num_layers: int | None) -> nn.Module:
    """``lm`` with only its first ``num_layers`` decoder layers (all of them when None)."""
    decoder = lm.get_decoder()
    if num_layers is None or num_layers >= len(decoder.layers):
        return lm
    decoder.layers = decoder.layers[:num_layers]
    lm.config.num_hidden_layers = num_layers
    if getattr(lm.config, "layer_types", None):
        lm.config.layer_types = lm.config.layer_types[:num_layers]
    return lm


_HEADS = ("state_encoder", "action_embedding", "action_head", "state_head")


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode and without gradients for the block; its mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def to_tensors(batch: dict[str, Any], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Collated numpy arrays as tensors on ``device``."""
    return {key: torch.as_tensor(value, device=device) for key, value in batch.items()}
