"""The image-text-to-text families of transformers that withdrawal does not cover: planned, or not applicable."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Uncovered:
    """An image-text-to-text family of transformers that withdrawal does not cover, and why."""

    architectures: tuple[str, ...]
    reason: str


# Every image-text-to-text family of the installed transformers (its MODEL_FOR_IMAGE_TEXT_TO_TEXT mapping) is
# either supported (ADAPTERS), planned or not applicable; `vtw models` and docs/architectures.md list all three
# and a test checks that no family of the mapping is missing. Planned: withdrawal applies, the work is not done.
PLANNED: dict[str, Uncovered] = {
    # Read, not done: what withdrawal needs beyond an adapter entry.
    "Gemma 3n": Uncovered(("Gemma3nForConditionalGeneration",),
                          "per-layer inputs (PLE) to slice with the hidden states, KV sharing across layers, audio "
                          "tokens"),
    "Molmo2": Uncovered(("Molmo2ForConditionalGeneration",),
                        "image_patch_id tokens, bidirectional inside image blocks (gone past K, as in Gemma 3); its "
                        "processor needs torchvision and builds pooling indices: no tiny model yet"),
    "MiniCPM-V 4.6 / 4.7 / MiniCPM-OCR": Uncovered(
        ("MiniCPMV4_6ForConditionalGeneration", "MiniCPMV4_7ForConditionalGeneration",
         "MiniCPMOcrForConditionalGeneration"),
        "a Qwen3.5 language model (supported as Qwen3.5) behind MiniCPM's own vision tower and merger; "
        "not tested yet"),
    "Kimi-K2.5": Uncovered(("Kimi_K25ForConditionalGeneration",),
                           "DeepSeek-V3 language model (MLA attention, MoE); not tested yet"),
    "Nemotron-H Omni": Uncovered(("NemotronH_Omni_Reasoning_V3",),
                                 "hybrid Mamba language model: recurrent state past K, like Qwen3.5"),
    "Qwen2.5-Omni / Qwen3-Omni (thinker)": Uncovered(
        ("Qwen2_5OmniThinkerForConditionalGeneration", "Qwen3OmniMoeThinkerForConditionalGeneration"),
        "audio tokens interleaved with video (TMRoPE); not tested yet"),
    "Chameleon / Emu3": Uncovered(("ChameleonForConditionalGeneration", "Emu3ForConditionalGeneration"),
                                  "early fusion: images are VQ codes of the vocabulary (a range of ids, not one)"),
    "BLIP-2 / InstructBLIP / InstructBLIP-Video": Uncovered(
        ("Blip2ForConditionalGeneration", "InstructBlipForConditionalGeneration",
         "InstructBlipVideoForConditionalGeneration"),
        "Q-Former query tokens in the language model's input; the Flan-T5 variants are encoder-decoders"),
    "Kosmos-2 / Kosmos-2.5": Uncovered(("Kosmos2ForConditionalGeneration", "Kosmos2_5ForConditionalGeneration"),
                                       "image embeddings placed by image_embeds_position_mask, no image token id"),
    "GIT": Uncovered(("GitForCausalLM",), "image features prepended as embeddings, attended bidirectionally"),
    "Fuyu": Uncovered(("FuyuForCausalLM",), "image patches projected straight into the sequence; not tested yet"),
    "Aria": Uncovered(("AriaForConditionalGeneration",), "MoE language model; not tested yet"),
    "DeepSeek-VL-Hybrid / DeepSeek-OCR-2 / Unlimited-OCR": Uncovered(
        ("DeepseekVLHybridForConditionalGeneration", "DeepseekOcr2ForConditionalGeneration",
         "UnlimitedOcrForConditionalGeneration"), "a second (SAM) high-resolution tower; not tested yet"),
    "PerceptionLM": Uncovered(("PerceptionLMForConditionalGeneration",),
                              "its vision tower is a timm model: no tiny model without timm; not tested yet"),
    "FastVLM": Uncovered(("FastVlmForConditionalGeneration",),
                         "its vision tower (FastViTHD) is a timm model: no tiny model without timm; not tested yet"),
    "GOT-OCR2 / PP-Chart2Table": Uncovered(("GotOcr2ForConditionalGeneration",), "not tested yet"),
    "Granite Docling": Uncovered(("GraniteDoclingForConditionalGeneration",), "not tested yet"),
    "GLM-OCR / GLM-5-Next": Uncovered(("GlmOcrForConditionalGeneration", "Glm5NextForConditionalGeneration"),
                                      "M-RoPE like GLM-4.1V; not tested yet"),
    "Mistral Large 4 / Mistral 4": Uncovered(("MistralLarge4ForConditionalGeneration", "Mistral4ForCausalLM"),
                                             "not tested yet"),
    "MiniMax-M3-VL": Uncovered(("MiniMaxM3SparseForConditionalGeneration",), "not tested yet"),
    "ERNIE-4.5-VL-MoE": Uncovered(("Ernie4_5_VLMoeForConditionalGeneration",),
                                  "modality-specific experts; not tested yet"),
    "PaddleOCR-VL": Uncovered(("PaddleOCRVLForConditionalGeneration",), "M-RoPE; not tested yet"),
    "VideoLLaMA3": Uncovered(("VideoLlama3ForConditionalGeneration",), "not tested yet"),
    "HunYuan-VL / HY-V4-VL": Uncovered(("HunYuanVLForConditionalGeneration", "HYV4VLForConditionalGeneration"),
                                       "not tested yet"),
    "HyperCLOVA X Vision V2": Uncovered(("HyperCLOVAXVisionV2ForConditionalGeneration",), "not tested yet"),
    "Exaone 4.5": Uncovered(("Exaone4_5_ForConditionalGeneration",), "not tested yet"),
    "Step3p7": Uncovered(("Step3p7ForConditionalGeneration",), "not tested yet"),
    "Dots3 Note": Uncovered(("Dots3NoteForConditionalGeneration",), "not tested yet"),
    "Qianfan-OCR": Uncovered(("QianfanOCRForConditionalGeneration",), "not tested yet"),
    "Apertus 1.5": Uncovered(("Apertus1p5ForConditionalGeneration",), "not tested yet"),
    "Cohere Compass": Uncovered(("CohereCompassForConditionalGeneration",), "not tested yet"),
    "Cosmos3 Edge / Omni": Uncovered(("Cosmos3EdgeForConditionalGeneration", "Cosmos3OmniForConditionalGeneration"),
                                     "not tested yet"),
    "Inkling / Inkling2 / Inkling2-Loop": Uncovered(
        ("InklingForConditionalGeneration", "Inkling2ForConditionalGeneration", "Inkling2LoopForConditionalGeneration"),
        "not tested yet"),
    "Muse Glimmer / Muse Spark": Uncovered(("MuseGlimmerForConditionalGeneration", "MuseSparkForConditionalGeneration"),
                                           "not tested yet"),
    "LFM3-VL": Uncovered(("Lfm3VlForConditionalGeneration",), "not tested yet"),
    "Qwen4-Exp": Uncovered(("Qwen4ExpForConditionalGeneration",), "not tested yet"),
    "Gemma 4 Unified": Uncovered(("Gemma4UnifiedForConditionalGeneration",),
                                 "Gemma 4's mechanisms (per-layer inputs, KV sharing); not tested yet"),
}

# Families where withdrawing vision tokens from the decoder's sequence does not apply.
NOT_APPLICABLE: dict[str, Uncovered] = {
    "Mllama (Llama 3.2 Vision)": Uncovered(("MllamaForConditionalGeneration",),
                                           "cross-attention: image features never enter the decoder's sequence"),
    "Idefics (v1)": Uncovered(("IdeficsForVisionText2Text",), "cross-attention: no vision tokens in the sequence"),
    "Encoder-decoders": Uncovered(
        ("Florence2ForConditionalGeneration", "Pix2StructForConditionalGeneration",
         "PPFormulaNetForConditionalGeneration", "T5Gemma2ForConditionalGeneration", "UdopForConditionalGeneration", "VisionEncoderDecoderModel",
         "BlipForConditionalGeneration"),
        "the image is read by an encoder (and cross-attention), the decoder has no vision tokens to withdraw"),
    "Evolla": Uncovered(("EvollaForProteinText2Text",), "protein-text model: no vision tokens"),
    "PI0": Uncovered(("PI0ForConditionalGeneration",), "vision-language-action policy: actions from a flow-matching "
                                                         "expert, not next-token decoding"),
    "Diffusion Gemma": Uncovered(("DiffusionGemmaForBlockDiffusion",),
                                 "block diffusion: bidirectional denoising, not causal next-token decoding"),
}
