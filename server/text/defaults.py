"""Per-model request defaults, from the manifest's `[<modality>.defaults]` table."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# The seed's system prompt (chapter 3's TinyLlama example).
FASTAPI_BOT_PROMPT = (
    "Your name is FastAPI bot and you are a helpful\n"
    "chatbot responsible for teaching FastAPI to your users.\n"
    "Always respond in markdown."
)


class TextDefaults(BaseModel):
    """What an unset request field means. The seed's values unless the manifest says otherwise."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.7, ge=0)
    top_k: int = Field(50, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    do_sample: bool = True
    system_prompt: str = FASTAPI_BOT_PROMPT
