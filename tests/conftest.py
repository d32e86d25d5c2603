import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download
SHARED = os.path.join(os.path.dirname(REPO), "shared")
# One thread per process: on a small shared CPU, PyTorch's default of one thread per core
# oversubscribes as soon as a test starts a subprocess (measured ~10x slower on 2 cores).
os.environ.setdefault("OMP_NUM_THREADS", "1")


import pytest  # noqa: E402


@pytest.fixture
def server(request):
    """make(**faults) -> a started fake LLM server (tests/fake_llm_server.py) that accepts the
    test module's KEY; every server made is stopped after the test."""
    from fake_llm_server import FakeLLM
    made = []

    def make(**kw):
        made.append(FakeLLM(request.module.KEY, **kw).start())
        return made[-1]
    yield make
    for s in made:
        s.stop()


@pytest.fixture(scope="session")
def wider_tiny(tmp_path_factory):
    """A checkpoint folder whose tokenizer is not tiny's: tiny's plus 8 tokens, its embeddings
    grown to match (for --init alone / --model vs --init checks)."""
    import common
    path = str(tmp_path_factory.mktemp("wider") / "ckpt")
    tok, model = common.load_tokenizer("tiny"), common.load_model("tiny")
    tok.add_tokens([f"<extra{i}>" for i in range(8)])
    model.resize_token_embeddings(len(tok))
    common.save_hf(model, tok, path)
    return path
