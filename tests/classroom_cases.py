"""Answers for testing the exercises' checks and scripts/grade.py: right, wrong and gaming.

Each entry is the source of an answer cell, as a student would write it in place of the stub.
`tests/test_classroom.py` turns them into synthetic submissions and grades them all with ONE run
of each notebook (scripts/grade.py):

- RIGHT: correct answers the check must accept besides the stored solution (another way to
  compute it, another dtype...). Each must be graded "correct".
- WRONG: plausible mistakes, at least one per exercise. Each must be graded "wrong": the check
  raises an AssertionError whose message (the hint) says where to look, not what to answer.
- GAMING (built from the templates below for every exercise, plus SPECIFIC_GAMING): attempts to
  score without the answer. Each must score 0.

Keys: the notebook's file stem, then the exercise number.
"""

RIGHT = {
    "08_lora_variants": {
        2: [
            # float64 SVD, cast back
            "def pissa_init(w0, r, scaling):\n"
            "    U, S, Vh = torch.linalg.svd(w0.double(), full_matrices=False)\n"
            "    root = torch.sqrt(S[:r] / scaling)\n"
            "    A = root[:, None] * Vh[:r]\n"
            "    B = U[:, :r] * root[None, :]\n"
            "    return A.float(), B.float(), (w0.double() - scaling * B @ A).float()\n"
            "\ncheck_exercise_2(pissa_init)\n",
            # float64 throughout (any float dtype is a right answer)
            "def pissa_init(w0, r, scaling):\n"
            "    U, S, Vh = torch.linalg.svd(w0.double(), full_matrices=False)\n"
            "    root = torch.sqrt(S[:r] / scaling)\n"
            "    A, B = root[:, None] * Vh[:r], U[:, :r] * root[None, :]\n"
            "    return A, B, w0.double() - scaling * B @ A\n"
            "\ncheck_exercise_2(pissa_init)\n",
            # from the eigendecomposition of w0^T w0 (eigh: ascending order, arbitrary signs)
            "def pissa_init(w0, r, scaling):\n"
            "    evals, evecs = torch.linalg.eigh(w0.T.double() @ w0.double())\n"
            "    V = evecs[:, -r:].flip(1)                      # (in, r), largest first\n"
            "    S = evals[-r:].flip(0).clamp_min(0).sqrt()\n"
            "    U = (w0.double() @ V) / S                      # (out, r)\n"
            "    root = torch.sqrt(S / scaling)\n"
            "    A, B = (root[:, None] * V.T).float(), (U * root[None, :]).float()\n"
            "    return A, B, w0 - scaling * B @ A\n"
            "\ncheck_exercise_2(pissa_init)\n",
            # sign-flipped singular pairs (u_i, v_i) -> (-u_i, -v_i) are just as right
            "def pissa_init(w0, r, scaling):\n"
            "    U, S, Vh = torch.linalg.svd(w0, full_matrices=False)\n"
            "    signs = torch.tensor([(-1.0) ** i for i in range(r)])\n"
            "    root = torch.sqrt(S[:r] / scaling)\n"
            "    A = signs[:, None] * root[:, None] * Vh[:r]\n"
            "    B = U[:, :r] * signs[None, :] * root[None, :]\n"
            "    return A, B, w0 - scaling * B @ A\n"
            "\ncheck_exercise_2(pissa_init)\n",
        ],
    },
}

WRONG = {
    "01_introduction": {
        1: ["answer = 32 * 4 * 16 * (4096 + 4096)   # as if k_proj and v_proj were square\n"
            "check_exercise_1(answer)\n"],
        2: ["adapter = (16 * (4096 + 4096) * 2 + 2 * (11008 + 4096) * 2) * 32 * 2   # gate_proj forgotten\n"
            "answer = 6_738_415_616 * 2 // adapter\n"
            "check_exercise_2(answer)\n",
            "adapter = (16 * (4096 + 4096) * 2 + 2 * (11008 + 4096) * 3) * 32\n"
            "answer = 6_738_415_616 * 2 // adapter   # bytes divided by parameters\n"
            "check_exercise_2(answer)\n",
            "adapter = 16 * ((4096 + 4096) * 2 + (11008 + 4096) * 3) * 32 * 2   # r = 16 everywhere\n"
            "answer = 6_738_415_616 * 2 // adapter\n"
            "check_exercise_2(answer)\n"],
        3: ["def max_rank(d, k, fraction):\n"
            "    return round(fraction * d * k / (d + k))   # rounds up half the time\n"
            "\ncheck_exercise_3(max_rank)\n",
            "def max_rank(d, k, fraction):\n"
            "    return fraction * d * k // (d + k)   # a float\n"
            "\ncheck_exercise_3(max_rank)\n"],
    },
    "02_mathematical_formulation": {
        1: ["sigma = 1 / np.arange(1, 101)\n"
            "tail = 1 - np.cumsum(sigma) / sigma.sum()   # singular values, not their squares\n"
            "answer = int(np.argmax(tail <= 0.1)) + 1\n"
            "check_exercise_1(answer)\n",
            "energy = 1 / np.arange(1, 101) ** 2\n"
            "tail = 1 - np.cumsum(energy) / energy.sum()\n"
            "answer = int(np.argmax(tail <= 0.1)) + 1   # 10% of the energy, not of the norm\n"
            "check_exercise_1(answer)\n"],
        2: ['answer = {"A random, B = 0"}\ncheck_exercise_2(answer)\n',
            'answer = {"A random, B = 0", "A = 0, B random", "A = 0, B = 0"}\n'
            "check_exercise_2(answer)\n"],
        3: ["answer = (8, 8)   # alpha unchanged\ncheck_exercise_3(answer)\n",
            "answer = (32, 16)   # alpha proportional to r\ncheck_exercise_3(answer)\n"],
    },
    "03_implementation": {
        1: ["answer = (4, 4, 4)   # as if merging kept the weight low-rank\ncheck_exercise_1(answer)\n",
            "answer = (4, 64, 4)   # as if the two adapters shared one subspace\ncheck_exercise_1(answer)\n",
            "answer = (4, 68, 8)   # ranks added, past the matrix's size\ncheck_exercise_1(answer)\n"],
        2: ["answer = 2 / 3 + 0.02   # as for a layer whose input needs a gradient\n"
            "check_exercise_2(answer)\n"],
        3: ["def swap_merged(model, adapter):\n"
            "    L.unmerge_lora(model)\n"
            "    L.load_lora_state_dict(model, adapter)   # ... and never merged again\n"
            "\ncheck_exercise_3(swap_merged)\n",
            "def swap_merged(model, adapter):\n"
            "    for _, layer in L.lora_layers(model):\n"
            "        layer.merged = False                 # the old update stays in the weight\n"
            "    L.load_lora_state_dict(model, adapter)\n"
            "    L.merge_lora(model)\n"
            "\ncheck_exercise_3(swap_merged)\n"],
        4: ["def lora_layer(x, W0, b, A, B, scaling):\n"
            "    h = x @ W0.T + b + (x @ A.T) @ B.T            # the scaling forgotten\n"
            "    W_merged = W0 + scaling * B @ A\n"
            "    return h, W_merged, W_merged - scaling * B @ A\n"
            "\ncheck_exercise_4(lora_layer)\n",
            "def lora_layer(x, W0, b, A, B, scaling):\n"
            "    h = x @ W0.T + b + scaling * (x @ A.T) @ B.T\n"
            "    W_merged = W0 + scaling * (B @ A).T            # transposed: (k, d)\n"
            "    return h, W_merged, W_merged - scaling * (B @ A).T\n"
            "\ncheck_exercise_4(lora_layer)\n",
            "def lora_layer(x, W0, b, A, B, scaling):\n"
            "    h = x @ W0.T + b + scaling * (x @ A.T) @ B.T\n"
            "    W_merged = W0 + B @ A                          # a merge that does not scale\n"
            "    return h, W_merged, W_merged - B @ A\n"
            "\ncheck_exercise_4(lora_layer)\n",
            "def lora_layer(x, W0, b, A, B, scaling):\n"
            "    W_merged = W0 + scaling * B @ A\n"
            "    h = x @ W_merged.T + b                         # the forward pass merges silently\n"
            "    return h, W_merged, W_merged - scaling * B @ A\n"
            "\ncheck_exercise_4(lora_layer)\n",
            "def lora_layer(x, W0, b, A, B, scaling):\n"
            "    h = x @ W0.T + b + scaling * (x @ A.T) @ B.T\n"
            "    W0 += scaling * B @ A                          # merged in place: W0 is lost\n"
            "    return h, W0, W0 - scaling * B @ A\n"
            "\ncheck_exercise_4(lora_layer)\n"],
        5: ["def lora_grads(x, g, A, B, scaling):\n"
            "    grad_A = scaling * g.T @ x                     # B^T missing\n"
            "    grad_B = scaling * g.T @ (x @ A.T)\n"
            "    return grad_A, grad_B\n"
            "\ncheck_exercise_5(lora_grads)\n",
            "def lora_grads(x, g, A, B, scaling):\n"
            "    return (g @ B).T @ x, g.T @ (x @ A.T)          # the scaling forgotten\n"
            "\ncheck_exercise_5(lora_grads)\n",
            "def lora_grads(x, g, A, B, scaling):\n"
            "    n = len(x)                                     # averaged, not summed, over the batch\n"
            "    return scaling * (g @ B).T @ x / n, scaling * g.T @ (x @ A.T) / n\n"
            "\ncheck_exercise_5(lora_grads)\n"],
        6: ["def loraplus_groups(model, lr, ratio):\n"
            "    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]\n"
            "    return [{'params': [p for n, p in trainable if 'lora_A' in n], 'lr': lr * ratio},   # lambda on A\n"
            "            {'params': [p for n, p in trainable if 'lora_B' in n], 'lr': lr}]\n"
            "\ncheck_exercise_6(loraplus_groups)\n",
            "def loraplus_groups(model, lr, ratio):\n"
            "    named = list(model.named_parameters())         # the frozen weights too\n"
            "    return [{'params': [p for n, p in named if 'lora_B' not in n], 'lr': lr},\n"
            "            {'params': [p for n, p in named if 'lora_B' in n], 'lr': lr * ratio}]\n"
            "\ncheck_exercise_6(loraplus_groups)\n",
            "def loraplus_groups(model, lr, ratio):\n"
            "    return [{'params': [p for n, p in model.named_parameters() if 'lora_B' in n],\n"
            "             'lr': lr * ratio}]                    # A left out\n"
            "\ncheck_exercise_6(loraplus_groups)\n"],
    },
    "04_visualization": {
        1: ["def energy_share(m, reference, k):\n"
            "    u, v = L.top_singular_vectors(reference, k)\n"
            "    return L.projection_norm(m, u, v) / float(m.norm())   # norms, not squared norms\n"
            "\ncheck_exercise_1(energy_share)\n",
            "def energy_share(m, reference, k):\n"
            "    u, v = L.top_singular_vectors(m, k)   # m's own directions\n"
            "    return L.projection_norm(m, u, v) ** 2 / float(m.norm() ** 2)\n"
            "\ncheck_exercise_1(energy_share)\n"],
        2: ["pre_ranks = {n: L.energy_rank(W0[n], 0.9) for n in NAMES}   # W0, not W0 - W_init\n"
            "check_exercise_2(pre_ranks)\n"],
        3: ["def chance_level(w, r):\n"
            "    m, n = w.shape\n"
            "    return float(w.norm()) * (r / m) * (r / n)   # the square root forgotten\n"
            "\ncheck_exercise_3(chance_level)\n",
            "def chance_level(w, r):\n"
            "    m, n = w.shape\n"
            "    return float(w.norm()) * r / max(m, n)\n"
            "\ncheck_exercise_3(chance_level)\n"],
    },
    "05_applications": {
        1: ["per_rank = 4 * (128 + 128) + 2 * (128 + 512)   # one block only\n"
            "answer = (int(0.05 * n_total) - 1_290) // per_rank\n"
            "check_exercise_1(answer)\n"],
        2: ["a = runs['LoRA q,v r=4'][0]['checkpoint_bytes']\n"
            "answer = math.floor(10 * full_bytes / (full_bytes - 10 * a))   # rounded down\n"
            "check_exercise_2(answer)\n",
            "answer = 10   # the base forgotten\ncheck_exercise_2(answer)\n"],
        3: ["def switch_task(model, adapter):\n"
            "    L.unmerge_lora(model)\n"
            "    load_adapter(model, adapter)   # ... and never merged again\n"
            "    return model\n"
            "\ncheck_exercise_3(switch_task)\n",
            "def switch_task(model, adapter):\n"
            "    for _, layer in L.lora_layers(model):\n"
            "        layer.merged = False         # the old update stays in the weight\n"
            "    load_adapter(model, adapter)\n"
            "    L.merge_lora(model)\n"
            "    return model\n"
            "\ncheck_exercise_3(switch_task)\n"],
    },
    "06_understanding_low_rank_updates": {
        1: ["def rank_for_budget(budget, d_model, n_layers, n_types):\n"
            "    r, rest = divmod(budget, d_model * n_layers * n_types)   # A only\n"
            "    if rest:\n"
            "        raise ValueError('no integer rank')\n"
            "    return r\n"
            "\ncheck_exercise_1(rank_for_budget)\n",
            "def rank_for_budget(budget, d_model, n_layers, n_types):\n"
            "    return budget // (2 * d_model * n_layers * n_types)   # never raises\n"
            "\ncheck_exercise_1(rank_for_budget)\n"],
        2: ["def phi_shared(i, j, d, s):\n"
            "    return max(i, j) / d                                # the shared directions ignored\n"
            "\ncheck_exercise_2(phi_shared)\n",
            "def phi_shared(i, j, d, s):\n"
            "    return (s + (i - s) * (j - s) / d) / min(i, j)      # the rest as if it had all d dimensions\n"
            "\ncheck_exercise_2(phi_shared)\n",
            "def phi_shared(i, j, d, s):\n"
            "    return s / min(i, j) + max(i, j) / d                # the chance level added on top\n"
            "\ncheck_exercise_2(phi_shared)\n"],
        3: ["def amplification(delta_w, w, r):\n"
            "    U, S, Vh = torch.linalg.svd(w.double())   # the directions of W, not of delta W\n"
            "    projected = U[:, :r].T @ w.double() @ Vh[:r].T\n"
            "    return float(delta_w.double().norm() / projected.norm())\n"
            "\ncheck_exercise_3(amplification)\n",
            "def amplification(delta_w, w, r):\n"
            "    U, S, Vh = torch.linalg.svd(delta_w.double())\n"
            "    projected = U[:, :r].T @ w.double() @ Vh[:r].T\n"
            "    return float(projected.norm() / delta_w.double().norm())   # the ratio upside down\n"
            "\ncheck_exercise_3(amplification)\n",
            "def amplification(delta_w, w, r):\n"
            "    U, S, Vh = torch.linalg.svd(delta_w.double())\n"
            "    projected = U[:, :r].T @ w.double() @ Vh[:, :r]    # the columns of Vh, not its rows\n"
            "    return float(delta_w.double().norm() / projected.norm())\n"
            "\ncheck_exercise_3(amplification)\n"],
    },
    "07_lora_on_a_language_model": {
        1: ["def frontier(points):\n"
            "    return [i for i, p in enumerate(points)   # forgetting read as better when high\n"
            "            if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points)]\n"
            "\ncheck_exercise_1(frontier)\n",
            "def frontier(points):\n"
            "    return [i for i, p in enumerate(points)   # strictly better in both: ties kept\n"
            "            if not any(q[0] > p[0] and q[1] < p[1] for q in points)]\n"
            "\ncheck_exercise_1(frontier)\n",
            "def frontier(points):\n"
            "    best = max(p[0] for p in points)          # only the most learning\n"
            "    return [i for i, p in enumerate(points) if p[0] == best]\n"
            "\ncheck_exercise_1(frontier)\n"],
        2: ["answer = math.log2(96)   # the bias ignored: the uniform guess\ncheck_exercise_2(answer)\n",
            "bias_only = copy.deepcopy(base)\n"
            "with torch.no_grad():\n"
            "    bias_only.lm_head.weight.zero_()\n"
            "answer = L.bits_per_character(bias_only, data['docs', 'validation'])   # the docs, not the code\n"
            "check_exercise_2(answer)\n",
            "bias_only = copy.deepcopy(base)\n"
            "with torch.no_grad():\n"
            "    bias_only.lm_head.weight.zero_()\n"
            "answer = L.bits_per_character(bias_only, data['code', 'validation']) * math.log(2)   # nats\n"
            "check_exercise_2(answer)\n"],
        3: ["def next_char_greedy(model, ids):\n"
            "    with torch.no_grad():\n"
            "        return model(ids)[0, 0].argmax().item()   # the first position\n"
            "\ncheck_exercise_3(next_char_greedy)\n"],
    },
    "08_lora_variants": {
        1: ["answer = 2 * 64   # the one-block model of section 5\ncheck_exercise_1(answer)\n",
            "answer = 2 * (64 + 64 + 64)   # fc1's input width, not its output\ncheck_exercise_1(answer)\n",
            "answer = 64 + 64 + 128   # one block only\ncheck_exercise_1(answer)\n"],
        2: ["def pissa_init(w0, r, scaling):\n"
            "    U, S, Vh = torch.linalg.svd(w0, full_matrices=False)\n"
            "    root = torch.sqrt(S[:r])                     # the scaling forgotten\n"
            "    A, B = root[:, None] * Vh[:r], U[:, :r] * root[None, :]\n"
            "    return A, B, w0 - scaling * B @ A\n"
            "\ncheck_exercise_2(pissa_init)\n",
            "def pissa_init(w0, r, scaling):\n"
            "    U, S, Vh = torch.linalg.svd(w0, full_matrices=False)\n"
            "    root = torch.sqrt(S[:r] / scaling)\n"
            "    A, B = root[:, None] * Vh[:r], U[:, :r] * root[None, :]\n"
            "    return A, B, w0                              # the residual not subtracted\n"
            "\ncheck_exercise_2(pissa_init)\n",
            "def pissa_init(w0, r, scaling):\n"
            "    U, S, Vh = torch.linalg.svd(w0, full_matrices=False)\n"
            "    A = Vh[:r]                                   # all of S in B\n"
            "    B = U[:, :r] * (S[:r] / scaling)[None, :]\n"
            "    return A, B, w0 - scaling * B @ A\n"
            "\ncheck_exercise_2(pissa_init)\n"],
        3: ["answer = ((1.6e-3, 0.1), (1.6e-3, 0.1))   # every fast parameter decayed\ncheck_exercise_3(answer)\n",
            "answer = ((1.6e-3, 0.0), (1.6e-3, 0.0))   # 1-D parameters never decayed\ncheck_exercise_3(answer)\n",
            "answer = ((2e-4, 0.1), (2e-4, 0.0))   # A's rate: only lora_B is fast\ncheck_exercise_3(answer)\n"],
        4: ["def nf4_layer_bytes(out_features, in_features, double_quant, block_size):\n"
            "    n = out_features * in_features\n"
            "    if n % block_size:\n"
            "        raise ValueError(block_size)\n"
            "    blocks = n // 64                          # QLoRA's block size, whatever block_size\n"
            "    if not double_quant:\n"
            "        return n // 2 + 4 * blocks\n"
            "    return n // 2 + blocks + 4 * math.ceil(blocks / 256) + 4\n"
            "\ncheck_exercise_4(nf4_layer_bytes)\n",
            "def nf4_layer_bytes(out_features, in_features, double_quant, block_size):\n"
            "    n = out_features * in_features\n"
            "    if n % block_size:\n"
            "        raise ValueError(block_size)\n"
            "    blocks = n // block_size\n"
            "    if not double_quant:\n"
            "        return n // 2 + 4 * blocks\n"
            "    return n // 2 + blocks + 4 * (blocks // 256) + 4   # a partial group of 256 dropped\n"
            "\ncheck_exercise_4(nf4_layer_bytes)\n",
            "def nf4_layer_bytes(out_features, in_features, double_quant, block_size):\n"
            "    n = out_features * in_features           # never refuses a block size\n"
            "    blocks = n // block_size\n"
            "    if not double_quant:\n"
            "        return n // 2 + 4 * blocks\n"
            "    return n // 2 + blocks + 4 * math.ceil(blocks / 256) + 4\n"
            "\ncheck_exercise_4(nf4_layer_bytes)\n"],
        5: ["answer = 1   # the same rate\ncheck_exercise_5(answer)\n",
            "answer = 0.25   # the ratio upside down\ncheck_exercise_5(answer)\n"],
        6: ["answer = True\ncheck_exercise_6(answer)\n"],
    },
    "09_peft_and_scaling": {
        1: ["def peft_key(module_path, matrix):\n"
            "    return f'base_model.model.{module_path}.lora_{matrix}.default.weight'   # in-memory name\n"
            "\ncheck_exercise_1(peft_key)\n",
            "def peft_key(module_path, matrix):\n"
            "    return f'{module_path}.lora_{matrix}.weight'   # no prefix\n"
            "\ncheck_exercise_1(peft_key)\n"],
        2: ["answer_2 = 2 * (8 * (64 + 64) * 2 + 8 * (64 + 128))   # rank_pattern ignored\n"
            "check_exercise_2(answer_2)\n"],
        3: ["def merge_conv1d(weight, lora_A, lora_B, scaling):\n"
            "    return weight + scaling * lora_B @ lora_A   # not transposed\n"
            "\ncheck_exercise_3(merge_conv1d)\n",
            "def merge_conv1d(weight, lora_A, lora_B, scaling):\n"
            "    return weight + (lora_B @ lora_A).T   # the scaling forgotten\n"
            "\ncheck_exercise_3(merge_conv1d)\n"],
    },
    "10_lora_beyond_linear": {
        1: ["def conv_lora_forward(x, base, lora_A, lora_B, scaling):\n"
            "    h = F.conv2d(x, lora_A, stride=base.stride, padding=base.padding, dilation=base.dilation)\n"
            "    return base(x) + F.conv2d(h, lora_B)   # the scaling forgotten\n"
            "\ncheck_exercise_1(conv_lora_forward)\n"],
        2: ["answer_2 = 8 * (320 + 320)   # the kernel's k² forgotten\ncheck_exercise_2(answer_2)\n",
            "answer_2 = 320 * 320 * 3 * 3   # the conv's weight, not the adapter\ncheck_exercise_2(answer_2)\n"],
        3: ["def embedding_delta(lora_embedding_A, lora_embedding_B, scaling):\n"
            "    return scaling * (lora_embedding_B @ lora_embedding_A)   # (d, n), not transposed\n"
            "\ncheck_exercise_3(embedding_delta)\n",
            "def embedding_delta(lora_embedding_A, lora_embedding_B, scaling):\n"
            "    return (lora_embedding_B @ lora_embedding_A).T   # the scaling forgotten\n"
            "\ncheck_exercise_3(embedding_delta)\n"],
    },
}

# Gaming templates, filled in per exercise: {n} the number, {name} the name the answer cell
# passes to the check, {wrong} the exercise's first WRONG source. "value" templates are used
# where the answer is a value, "function" ones where it is a function.
ANYTHING = (
    "class Anything:\n"
    "    def __eq__(self, other): return True\n"
    "    def __ne__(self, other): return False\n"
    "    __lt__ = __le__ = __gt__ = __ge__ = __eq__\n"
    "    def __hash__(self): return 0\n"
    "    def __bool__(self): return True\n"
    "    def __float__(self): return 0.0\n"
    "    def __iter__(self): return iter([self, self, self])\n"
    "    def _self(self, *args): return self\n"
    "    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _self\n"
    "    __truediv__ = __rtruediv__ = __matmul__ = __rmatmul__ = __pow__ = __abs__ = __neg__ = _self\n"
    "    __getitem__ = __getattr__ = _self\n"
    "    def __call__(self, *args, **kwargs): return self\n"
)
ALWAYS_INT = (
    "class AlwaysEqual(int):\n"
    "    def __eq__(self, other): return True\n"
    "    def __ne__(self, other): return False\n"
    "    __hash__ = int.__hash__\n"
)
PATCH_TORCH = ("import torch, math\n"
               "torch.allclose = torch.equal = math.isclose = lambda *args, **kwargs: True\n")
PATCH_BUILTINS = "import builtins\nbuiltins.isinstance = lambda *args: True\n"
GAMING = {
    "prints the verdict": {
        "value": 'print("Exercise {n}: correct")\n',
        "function": 'print("Exercise {n}: correct")\n',
    },
    "redefines the check": {
        "value": "def check_exercise_{n}(answer):\n    print('Exercise {n}: correct')\n\n{wrong}",
        "function": "def check_exercise_{n}(answer):\n    print('Exercise {n}: correct')\n\n{wrong}",
    },
    "an int that equals everything": {
        "value": ALWAYS_INT + "{name} = AlwaysEqual(1)\ncheck_exercise_{n}({name})\n",
        "function": ALWAYS_INT + "def {name}(*args, **kwargs):\n    return AlwaysEqual(1)\n\n"
                                 "check_exercise_{n}({name})\n",
    },
    "an object that equals everything": {
        "value": ANYTHING + "{name} = Anything()\ncheck_exercise_{n}({name})\n",
        "function": ANYTHING + "def {name}(*args, **kwargs):\n    return Anything()\n\n"
                              "check_exercise_{n}({name})\n",
    },
    "asks the check until it passes": {
        "value": "for {name} in list(range(1, 300)) + [x / 100 for x in range(1, 300)]:\n"
                 "    try:\n"
                 "        check_exercise_{n}({name})\n"
                 "        break\n"
                 "    except Exception:\n"
                 "        pass\n",
        "function": "{wrong}",
    },
    "patches torch": {"value": PATCH_TORCH + "{wrong}", "function": PATCH_TORCH + "{wrong}"},
    "patches builtins": {"value": PATCH_BUILTINS + "{wrong}", "function": PATCH_BUILTINS + "{wrong}"},
    "ends the process": {
        "value": "import os\nos._exit(0)\n",
        "function": "import sys\nsys.exit(0)\n",
    },
}

# Games that need the exercise's own names: rebinding or mutating what the check reads.
SPECIFIC_GAMING = {
    "01_introduction": {
        1: ["count_parameters = lambda model: (7, 0)   # the check counts with this\n"
            "answer = 7\ncheck_exercise_1(answer)\n"],
        3: ["def max_rank(d, k, fraction):\n"
            "    import math\n"
            "    math.floor = lambda x: 0\n"
            "    return 0\n"
            "\ncheck_exercise_3(max_rank)\n"],
    },
    "03_implementation": {
        1: ["torch.linalg.matrix_rank = lambda m: torch.tensor(7)   # the check computes ranks with this\n"
            "answer = (7, 7, 7)\ncheck_exercise_1(answer)\n",
            "adapter_transposed = adapter_flipped   # the check reads both adapters\n"
            "answer = (4, 64, 4)\ncheck_exercise_1(answer)\n"],
        6: ["def loraplus_groups(model, lr, ratio):   # the package answers for the student\n"
            "    return L.create_loraplus_optimizer(model, torch.optim.AdamW, lr=lr,\n"
            "                                       loraplus_lr_ratio=ratio).param_groups\n"
            "\ncheck_exercise_6(loraplus_groups)\n",
            "def loraplus_groups(model, lr, ratio):\n"
            "    from lora_helpers.optimizers import loraplus_parameter_groups\n"
            "    groups = loraplus_parameter_groups(model)\n"
            "    return [{'params': list(groups['groupA'].values()), 'lr': lr},\n"
            "            {'params': list(groups['groupB'].values()), 'lr': lr * ratio}]\n"
            "\ncheck_exercise_6(loraplus_groups)\n"],
    },
    "06_understanding_low_rank_updates": {
        3: ["def amplification(delta_w, w, r):   # the package answers for the student\n"
            "    return L.amplification_factor(delta_w, w, r)\n"
            "\ncheck_exercise_3(amplification)\n",
            "def amplification(delta_w, w, r):\n"
            "    from lora_helpers.rank import top_singular_vectors\n"
            "    U, V = top_singular_vectors(delta_w, r)\n"
            "    return float(delta_w.norm() / (U.T @ w @ V.T).norm())\n"
            "\ncheck_exercise_3(amplification)\n"],
    },
    "08_lora_variants": {
        1: ["copy.deepcopy = lambda model: L.TinyTransformerClassifier(d_model=4, n_heads=1, n_layers=1)\n"
            "answer = 7   # the check copies the model with this\ncheck_exercise_1(answer)\n"],
        4: ["def nf4_layer_bytes(out_features, in_features, double_quant, block_size):   # the package answers\n"
            "    return L.quantize_nf4(torch.zeros(out_features, in_features), block_size=block_size,\n"
            "                          double_quant=double_quant).nbytes\n"
            "\ncheck_exercise_4(nf4_layer_bytes)\n",
            "def nf4_layer_bytes(out_features, in_features, double_quant, block_size):   # section 6's helper\n"
            "    return nf4_bytes(out_features * in_features, double_quant, block=block_size)\n"
            "\ncheck_exercise_4(nf4_layer_bytes)\n"],
    },
    "09_peft_and_scaling": {
        1: ["class FakeFile:\n"
            "    def __enter__(self): return self\n"
            "    def __exit__(self, *args): return False\n"
            "    def keys(self): return [f'{n}.{ab}' for n, _ in L.lora_layers(loaded) for ab in 'AB']\n"
            "safe_open = lambda *args, **kwargs: FakeFile()   # the check reads the file's keys with this\n"
            "def peft_key(module_path, matrix):\n"
            "    return f'{module_path}.{matrix}'\n"
            "\ncheck_exercise_1(peft_key)\n"],
    },
}
