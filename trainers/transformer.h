// The Transformer language model of Lightning's demo
// (lightning/pytorch/demos/transformer.py, classes Transformer and
// PositionalEncoding), rebuilt module for module so that parameter names,
// registration order, shapes, initialisation and forward numerics are those of
// the Python demo: a state dict saved by either side loads into the other.
//
// Why not torch::nn::Transformer: its parameter names and order do match
// Python's, but it has no batch_first (the demo is batch-first), its modules
// allocate on the CPU in the default dtype (a 1B model must be constructible on
// the meta device for sharded materialisation), and its attention does not go
// through scaled_dot_product_attention as Python's does.
//
// Faithful quirks of the demo, kept on purpose:
//  * PositionalEncoding adds the single row pe[T] (T = sequence length) to every
//    position (`x + self.pe[:, x.size(1)]`), not pe[0:T]; the table is
//    computed on first use, is neither a parameter nor a buffer, and is not in
//    the state dict.
//  * The demo builds a causal `src_mask` but never passes it on: the encoder
//    attends without a mask; only the decoder self-attention is causal.
//  * Both encoder input (`inputs`) and decoder input (`target`) go through the
//    same embedding and positional encoding.
#ifndef FABRIC_TRAINERS_TRANSFORMER_H_
#define FABRIC_TRAINERS_TRANSFORMER_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/TensorOptions.h>
#include <torch/nn/module.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace fabric::trainers {

// The demo's constructor arguments (Transformer.__init__), same names.
struct TransformerConfig {
  int64_t vocab_size = 33278;  // the demo's default: WikiText-2 train vocabulary
  int64_t ninp = 200;          // d_model
  int64_t nhead = 2;
  int64_t nhid = 200;   // dim_feedforward
  int64_t nlayers = 2;  // encoder layers and, as many, decoder layers
  double dropout = 0.2;

  // Presets. "tiny": for tests. "demo": the Python demo's defaults. "1b":
  // 32+32 layers of width 1024, 1,008,763,390 parameters with the demo's
  // vocabulary of 33278.
  static TransformerConfig Tiny(int64_t vocab_size = 33278);
  static TransformerConfig Demo(int64_t vocab_size = 33278);
  static TransformerConfig OneB(int64_t vocab_size = 33278);
};

// The preset called `name` ("tiny", "demo" or "1b").
absl::StatusOr<TransformerConfig> TransformerPreset(absl::string_view name, int64_t vocab_size);

// Checks what nn.Transformer and the positional encoding need: positive sizes,
// ninp divisible by nhead, ninp even, dropout in [0, 1).
absl::Status ValidateTransformerConfig(const TransformerConfig& config);

// Number of parameters a model of this configuration has, without building it.
int64_t TransformerParameterCount(const TransformerConfig& config);

// Longest sequence the positional encoding accepts is kMaxLen - 1 (the demo's
// max_len = 5000; it indexes pe[T]).
inline constexpr int64_t kPositionalEncodingMaxLen = 5000;

// ---------------------------------------------------------------------------
// Building blocks. Every parameter is created with the TensorOptions given to
// the constructor (device and dtype; use the meta device to build without
// memory and materialise later), then initialised by ResetParameters() as
// Python initialises it. On the meta device initialisation is a no-op.

// nn.Linear: weight [out, in], bias [out].
class Linear : public torch::nn::Module {
 public:
  Linear(int64_t in_features, int64_t out_features, const at::TensorOptions& options);
  // kaiming_uniform_(a=sqrt(5)) for the weight, U(-1/sqrt(in), 1/sqrt(in)) for the bias.
  void ResetParameters();
  at::Tensor forward(const at::Tensor& x);

  at::Tensor weight;
  at::Tensor bias;
};

// nn.LayerNorm(dim), eps 1e-5, elementwise affine.
class LayerNorm : public torch::nn::Module {
 public:
  LayerNorm(int64_t dim, const at::TensorOptions& options);
  void ResetParameters();  // ones and zeros
  at::Tensor forward(const at::Tensor& x);

  at::Tensor weight;
  at::Tensor bias;
};

// nn.Embedding(num, dim); weight ~ N(0, 1).
class Embedding : public torch::nn::Module {
 public:
  Embedding(int64_t num_embeddings, int64_t dim, const at::TensorOptions& options);
  void ResetParameters();
  at::Tensor forward(const at::Tensor& ids);

  at::Tensor weight;
};

// nn.Dropout(p): registered so the module tree mirrors Python's.
class Dropout : public torch::nn::Module {
 public:
  explicit Dropout(double p) : p_(p) {}
  at::Tensor forward(const at::Tensor& x);
  double p() const { return p_; }

 private:
  double p_;
};

// nn.MultiheadAttention(embed_dim, num_heads, dropout, batch_first=True) with
// packed projections: in_proj_weight [3E, E], in_proj_bias [3E], out_proj.
class MultiheadAttention : public torch::nn::Module {
 public:
  MultiheadAttention(int64_t embed_dim, int64_t num_heads, double dropout,
                     const at::TensorOptions& options);
  // in_proj_weight xavier_uniform_, in_proj_bias and out_proj.bias zero,
  // out_proj.weight as nn.Linear.
  void ResetParameters();
  // query [B, Tq, E], key/value [B, Tk, E]. `causal` masks future keys.
  at::Tensor forward(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                     bool causal);

  at::Tensor in_proj_weight;
  at::Tensor in_proj_bias;
  std::shared_ptr<Linear> out_proj;

 private:
  int64_t embed_dim_;
  int64_t num_heads_;
  double dropout_;
};

// nn.TransformerEncoderLayer(norm_first=False, activation=relu, batch_first=True).
class TransformerEncoderLayer : public torch::nn::Module {
 public:
  TransformerEncoderLayer(const TransformerConfig& config, const at::TensorOptions& options);
  void ResetParameters();
  at::Tensor forward(const at::Tensor& src);

  std::shared_ptr<MultiheadAttention> self_attn;
  std::shared_ptr<Linear> linear1;
  std::shared_ptr<Dropout> dropout;
  std::shared_ptr<Linear> linear2;
  std::shared_ptr<LayerNorm> norm1;
  std::shared_ptr<LayerNorm> norm2;
  std::shared_ptr<Dropout> dropout1;
  std::shared_ptr<Dropout> dropout2;
};

// nn.TransformerDecoderLayer(norm_first=False, activation=relu, batch_first=True).
class TransformerDecoderLayer : public torch::nn::Module {
 public:
  TransformerDecoderLayer(const TransformerConfig& config, const at::TensorOptions& options);
  void ResetParameters();
  // Causal self-attention over `tgt`, unmasked attention over `memory`.
  at::Tensor forward(const at::Tensor& tgt, const at::Tensor& memory);

  std::shared_ptr<MultiheadAttention> self_attn;
  std::shared_ptr<MultiheadAttention> multihead_attn;
  std::shared_ptr<Linear> linear1;
  std::shared_ptr<Dropout> dropout;
  std::shared_ptr<Linear> linear2;
  std::shared_ptr<LayerNorm> norm1;
  std::shared_ptr<LayerNorm> norm2;
  std::shared_ptr<LayerNorm> norm3;
  std::shared_ptr<Dropout> dropout1;
  std::shared_ptr<Dropout> dropout2;
  std::shared_ptr<Dropout> dropout3;
};

// A container whose children are named "0", "1", ... like nn.ModuleList.
template <typename Layer>
class LayerList : public torch::nn::Module {
 public:
  void Append(std::shared_ptr<Layer> layer) {
    layers_.push_back(register_module(std::to_string(layers_.size()), std::move(layer)));
  }
  const std::vector<std::shared_ptr<Layer>>& layers() const { return layers_; }

 private:
  std::vector<std::shared_ptr<Layer>> layers_;
};

// nn.TransformerEncoder: children "layers" and the final "norm".
class TransformerEncoder : public torch::nn::Module {
 public:
  TransformerEncoder(const TransformerConfig& config, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& src);

  std::shared_ptr<LayerList<TransformerEncoderLayer>> layers;
  std::shared_ptr<LayerNorm> norm;
};

// nn.TransformerDecoder: children "layers" and the final "norm".
class TransformerDecoder : public torch::nn::Module {
 public:
  TransformerDecoder(const TransformerConfig& config, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& tgt, const at::Tensor& memory);

  std::shared_ptr<LayerList<TransformerDecoderLayer>> layers;
  std::shared_ptr<LayerNorm> norm;
};

// nn.Transformer(batch_first=True): children "encoder" and "decoder". Its
// ResetParameters re-draws every parameter of rank > 1 with xavier_uniform_,
// as nn.Transformer._reset_parameters does after the layers' own init.
class TransformerCore : public torch::nn::Module {
 public:
  TransformerCore(const TransformerConfig& config, const at::TensorOptions& options);
  void ResetParameters();
  at::Tensor forward(const at::Tensor& src, const at::Tensor& tgt);

  std::shared_ptr<TransformerEncoder> encoder;
  std::shared_ptr<TransformerDecoder> decoder;
};

// PositionalEncoding(ninp, dropout): no parameters; see the quirk above.
class PositionalEncoding : public torch::nn::Module {
 public:
  PositionalEncoding(int64_t dim, double dropout);
  // x [B, T, dim]; needs T < kPositionalEncodingMaxLen.
  at::Tensor forward(const at::Tensor& x);

  std::shared_ptr<Dropout> dropout;

 private:
  // The [max_len, dim] float32 table, computed as the demo does, per device.
  const at::Tensor& Table(const c10::Device& device);

  int64_t dim_;
  std::map<std::string, at::Tensor> tables_;  // keyed by device string
};

// The demo's Transformer. State dict keys, in order:
//   embedding.weight,
//   transformer.encoder.layers.<i>.{self_attn.{in_proj_weight,in_proj_bias,
//     out_proj.weight,out_proj.bias},linear1.*,linear2.*,norm1.*,norm2.*},
//   transformer.encoder.norm.*,
//   transformer.decoder.layers.<i>.{self_attn.*,multihead_attn.*,linear1.*,
//     linear2.*,norm1.*,norm2.*,norm3.*},
//   transformer.decoder.norm.*, decoder.weight, decoder.bias.
class Transformer : public torch::nn::Module {
 public:
  // `config` must pass ValidateTransformerConfig (checked: throws c10::Error
  // otherwise, as a torch module constructor does; validate first for a
  // Status). Parameters are created with `options` and initialised.
  explicit Transformer(const TransformerConfig& config,
                       const at::TensorOptions& options = at::TensorOptions());

  // Re-initialises every parameter as the Python demo's constructor does
  // (same distributions; the random streams differ from Python's).
  void ResetParameters();

  // inputs, target: int64 [B, T] token ids (batch first). Returns the
  // log-probabilities [B * T, vocab_size] (log_softmax over the vocabulary,
  // flattened like the demo's output.view(-1, vocab_size)).
  at::Tensor forward(const at::Tensor& inputs, const at::Tensor& target);

  const TransformerConfig& config() const { return config_; }

  std::shared_ptr<PositionalEncoding> pos_encoder;
  std::shared_ptr<Embedding> embedding;
  std::shared_ptr<TransformerCore> transformer;
  std::shared_ptr<Linear> decoder;

 private:
  TransformerConfig config_;
};

// The demo's training loss: nll_loss(log_probs, target.view(-1)), mean.
at::Tensor TransformerLoss(const at::Tensor& log_probs, const at::Tensor& target);

}  // namespace fabric::trainers

#endif  // FABRIC_TRAINERS_TRANSFORMER_H_
