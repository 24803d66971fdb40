"""The chosen tokenizer in Hugging Face format, loadable by ``AutoTokenizer`` with no custom code."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from tasks.tokenizer.config import TokenizerTrainingConfig

# Each turn opens with its role token and closes with eos; the generation prompt opens the
# assistant's turn. Unknown roles fail loudly instead of rendering a prompt the model never saw.
CHAT_TEMPLATE = (
    "{%- set role_tokens = ROLE_TOKENS -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] not in role_tokens -%}"
    "{{ raise_exception('unknown chat role ' + message['role'] + ': use one of ' + (role_tokens | list | join(', '))) }}"
    "{%- endif -%}"
    "{{ role_tokens[message['role']] + '\\n' + message['content'] + eos_token }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ role_tokens['assistant'] + '\\n' }}{%- endif -%}"
)


def chat_template(cfg: TokenizerTrainingConfig) -> str:
    """The Jinja chat template with this config's role tokens written in."""
    roles = "{" + ", ".join(f"{role!r}: {token!r}" for role, token in cfg.role_tokens.items()) + "}"
    return CHAT_TEMPLATE.replace("ROLE_TOKENS", roles)


def save_hf(tokenizer: Tokenizer, cfg: TokenizerTrainingConfig, out_dir: Path) -> None:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and the chat template to ``out_dir``.

    The boundary token is bos, eos and unk alike, as in GPT-2: byte-complete candidates never
    produce an unknown token, and one document separator serves as both start and end.
    ``model_max_length`` is left unset: the context length belongs to packing and training.
    """
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=cfg.boundary_token,
        eos_token=cfg.boundary_token,
        unk_token=cfg.boundary_token,
        pad_token=cfg.pad_token,
        extra_special_tokens=list(cfg.role_tokens.values()),
        chat_template=chat_template(cfg),
    )
    hf.save_pretrained(str(out_dir))
