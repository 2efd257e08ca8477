"""Chat text generation: a conversation in, tokens streamed out as they are produced."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from genserve.contract.limits import TextLimits
from genserve.contract.spec import NOT_BLANK, SEED_BOUNDS, Cost, Interaction, ModalitySpec, finite
from genserve.v1 import text_pb2

# Chapter 3's system prompt (its TinyLlama example), the default its readers expect.
FASTAPI_BOT_PROMPT = (
    "Your name is FastAPI bot and you are a helpful\n"
    "chatbot responsible for teaching FastAPI to your users.\n"
    "Always respond in markdown."
)
ChatRole = Literal["system", "user", "assistant"]
# Characters per token, to price a prompt before it is tokenized (English text, BPE).
CHARS_PER_TOKEN = 4


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: ChatRole
    content: str = Field(pattern=NOT_BLANK, description="must hold more than white space")


class TextParams(BaseModel):
    """What an unset field means: chapter 3's values unless the model's manifest says otherwise."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = Field("", description="a user turn, after messages; or give messages")
    messages: list[ChatMessage] = Field(default_factory=list, description="the conversation")
    system_prompt: str = Field(FASTAPI_BOT_PROMPT, description='"": no system turn')
    max_new_tokens: int = 256
    temperature: float = Field(0.7, description="0: greedy")
    top_k: int = Field(50, description="0: off")
    top_p: float = 0.95
    do_sample: bool = Field(True, description="false: greedy decoding")
    seed: int = Field(0, description="unset: random, reported in the final event")
    stop: list[str] = Field(default_factory=list, description="stop sequences, not in the output")


def text_bounds(limits: TextLimits) -> dict[str, dict[str, Any]]:
    return {
        "prompt": {
            "max_length": limits.max_prompt_chars,
            "description": f"with the system prompt and messages, at most "
            f"{limits.max_prompt_chars} characters",
        },
        "messages": {"max_length": limits.max_messages},
        "system_prompt": {"max_length": limits.max_prompt_chars},
        "max_new_tokens": {"ge": 1, "le": limits.max_new_tokens},
        "temperature": finite(0, limits.max_temperature),
        "top_k": {"ge": 0, "le": limits.max_top_k},
        "top_p": {"gt": 0, "le": 1, "allow_inf_nan": False},
        "seed": SEED_BOUNDS,
        "stop": {
            "max_length": limits.max_stop_sequences,
            "items": {"min_length": 1, "max_length": limits.max_stop_sequence_chars},
        },
    }


def text_cost(request: Any) -> Cost:
    """Prices a server TextRequest (its turns and max_new_tokens)."""
    prompt = sum(len(turn.content) for turn in request.messages) / CHARS_PER_TOKEN
    units = prompt + request.params.max_new_tokens
    return Cost(units, "prompt tokens + max_new_tokens", timed=False)


TEXT = ModalitySpec(
    name="text",
    aliases=("chat",),
    description="chat text generation, streamed token by token",
    proto_module=text_pb2,
    service_name="TextService",
    method="Generate",
    request_type=text_pb2.TextGenerateRequest,
    interaction=Interaction.TEXT_STREAM,
    params_type=TextParams,
    limits_type=TextLimits,
    settings_sections=("text",),
    bounds=text_bounds,
    cost=text_cost,
    mime_types=("text/plain",),
    http_path="/generate/text",
    sdk_timeout_s=300.0,
    engines={
        "llama.cpp": "genserve.server.text.loader:load_llama_text_engine",
        "transformers": "genserve.server.text.loader:load_batching_text_engine",
        "transformers-serial": "genserve.server.text.loader:load_serial_text_engine",
        "upstream": "genserve.server.upstream.loader:load_text_upstream",
    },
    default_engine="transformers",
    piece="delta",
    servicer="genserve.server.servicers.text:TextServicer",
    example=lambda: {"prompt": "What is FastAPI?", "max_new_tokens": 8, "do_sample": False},
)
