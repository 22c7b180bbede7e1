import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lenvm_rl import LengthCritic, LengthValueModel, completion_mask_from_ids, relative_length_advantages
from lenvm_rl.tasks import arithmetic_correctness

torch.manual_seed(0)
tokenizer = AutoTokenizer.from_pretrained("runs/tiny-policy")
policy = AutoModelForCausalLM.from_pretrained("runs/tiny-policy")
critic = LengthCritic(LengthValueModel.from_pretrained("runs/tiny-critic"), eos_token_ids=[tokenizer.eos_token_id])
optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-4, weight_decay=0.0)
prompts, answers, group = ["add 3 5", "add 2 4 1", "add 6 1 2 3"], ["8", "7", "12"], 4   # 4 samples per prompt
length_coef = 0.125  # LenVMGRPOConfig's default, the knee of the study's frontier (1.0 collapsed SmolLM2)

for step in range(3):
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                           tokenize=False) for p in prompts for _ in range(group)]
    batch = tokenizer(texts, padding=True, padding_side="left", add_special_tokens=False, return_tensors="pt")
    prompt_ids, prompt_mask = batch["input_ids"], batch["attention_mask"]           # (B, P), left-padded
    with torch.no_grad():
        output = policy.generate(**batch, do_sample=True, max_new_tokens=48, pad_token_id=tokenizer.pad_token_id)
    completion_ids = output[:, prompt_ids.shape[1]:]                                 # (B, T)
    completion_mask, terminated = completion_mask_from_ids(completion_ids, [tokenizer.eos_token_id])

    completions = [tokenizer.decode(ids[mask.bool()], skip_special_tokens=True)
                   for ids, mask in zip(completion_ids, completion_mask, strict=True)]
    rewards = torch.tensor(arithmetic_correctness(completions, [a for a in answers for _ in range(group)]))
    grouped = rewards.view(-1, group)                                                # GRPO-style task advantage
    task_advantages = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)).flatten()

    values = critic.values(prompt_ids, prompt_mask, completion_ids, completion_mask)  # (B, T+1), one forward
    length_advantages = relative_length_advantages(                                  # scale-free, gated (B, T)
        values, completion_mask, critic.gamma, group_size=group, lam=0.95, terminated=terminated,
        passed=rewards >= 1.0)                                                       # only correct answers earn it
    advantages = (task_advantages[:, None] + length_coef * length_advantages) * completion_mask  # (B, T)

    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)                      # left padding, as in generate
    logits = policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    logprobs = logits[:, prompt_ids.shape[1] - 1:-1].log_softmax(-1).gather(-1, completion_ids[..., None])[..., 0]
    loss = -(advantages * logprobs).sum() / completion_mask.sum()                    # REINFORCE, token-level
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    # The tiny policy is barely trained: its reward is near 0 and three steps of REINFORCE at this learning rate can
    # move it either way; the loop shows the shapes and the calls, `lenvm-rl demo` shows the term working.
    print(f"step {step}: reward {rewards.mean():.2f}, gate pass {(rewards >= 1).float().mean():.2f}, "
          f"truncated {(~terminated).float().mean():.2f}, loss {loss.item():+.4f}")
