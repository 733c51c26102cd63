"""Answers generated from a model whose decoder layers training compiled (a fine-tune's own evaluation)."""

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from shared.spec import EvaluationSpec
from worker.evaluation import generate_answers
from worker.performance import compile_decoder_layers
from worker.sources import load_tokenizer


def test_answers_are_generated_eagerly_where_training_compiled_the_layers_which_stay_compiled(
    tiny_model: Path, train_file: Path, local_root: Path
) -> None:
    """Generation calls the layers with a new shape at every token and under other guards (eval mode, no grad, the
    adapter off for a baseline): compiled, it would recompile, which costs more than it saves in one evaluation."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    tokenizer = load_tokenizer(str(tiny_model), [local_root])
    graphs: list[Any] = []

    def counting_backend(graph: torch.fx.GraphModule, _inputs: list[torch.Tensor]) -> Any:
        graphs.append(graph)
        return graph.forward

    compiled = compile_decoder_layers(model, backend=counting_backend)
    settings = EvaluationSpec(dataset={"id": str(train_file)}, max_new_tokens=3, batch_size=2)

    answers = generate_answers(model, tokenizer, ["Price is $", "How much? Price is $", "A lamp. Price is $"], settings)
    traced_by_generation = len(graphs)
    model.train()
    model(input_ids=torch.tensor([[1, 2, 3, 4]]), labels=torch.tensor([[1, 2, 3, 4]])).loss.backward()

    assert compiled == model.config.num_hidden_layers
    assert len(answers) == 3
    assert traced_by_generation == 0
    assert graphs, "the training step afterwards still runs the compiled layers"
