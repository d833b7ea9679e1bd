#include "trainers/transformer.h"

#include <cmath>
#include <utility>

#include <ATen/core/grad_mode.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cos.h>
#include <ATen/ops/dropout.h>
#include <ATen/ops/embedding.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/exp.h>
#include <ATen/ops/layer_norm.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/log_softmax.h>
#include <ATen/ops/nll_loss.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/scaled_dot_product_attention.h>
#include <ATen/ops/sin.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include "absl/strings/str_cat.h"

namespace fabric::trainers {
namespace {

// U(-bound, bound) in place, without recording autograd history.
void Uniform(at::Tensor& t, double bound) {
  at::NoGradGuard no_grad;
  t.uniform_(-bound, bound);
}

// torch.nn.init.xavier_uniform_ for a 2-D weight [fan_out, fan_in].
void XavierUniform(at::Tensor& t) {
  const double fan_out = static_cast<double>(t.size(0));
  const double fan_in = static_cast<double>(t.numel() / t.size(0));
  Uniform(t, std::sqrt(3.0) * std::sqrt(2.0 / (fan_in + fan_out)));
}

void Fill(at::Tensor& t, double value) {
  at::NoGradGuard no_grad;
  t.fill_(value);
}

}  // namespace

// --- Config -----------------------------------------------------------------

TransformerConfig TransformerConfig::Tiny(int64_t vocab_size) {
  TransformerConfig c;
  c.vocab_size = vocab_size;
  c.ninp = 32;
  c.nhead = 2;
  c.nhid = 64;
  c.nlayers = 2;
  return c;
}

TransformerConfig TransformerConfig::Demo(int64_t vocab_size) {
  TransformerConfig c;  // the defaults are the demo's
  c.vocab_size = vocab_size;
  return c;
}

TransformerConfig TransformerConfig::OneB(int64_t vocab_size) {
  TransformerConfig c;
  c.vocab_size = vocab_size;
  c.ninp = 1024;
  c.nhead = 64;
  c.nhid = 4096;
  c.nlayers = 32;
  return c;
}

absl::StatusOr<TransformerConfig> TransformerPreset(absl::string_view name, int64_t vocab_size) {
  if (name == "tiny") return TransformerConfig::Tiny(vocab_size);
  if (name == "demo") return TransformerConfig::Demo(vocab_size);
  if (name == "1b") return TransformerConfig::OneB(vocab_size);
  return absl::InvalidArgumentError(
      absl::StrCat("unknown Transformer preset '", name, "' (expected tiny, demo or 1b)"));
}

absl::Status ValidateTransformerConfig(const TransformerConfig& c) {
  if (c.vocab_size <= 0 || c.ninp <= 0 || c.nhead <= 0 || c.nhid <= 0 || c.nlayers <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Transformer config: vocab_size, ninp, nhead, nhid and nlayers must be positive (got ",
        c.vocab_size, ", ", c.ninp, ", ", c.nhead, ", ", c.nhid, ", ", c.nlayers, ")"));
  }
  if (c.ninp % c.nhead != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("Transformer config: ninp ", c.ninp, " is not divisible by nhead ", c.nhead));
  }
  if (c.ninp % 2 != 0) {
    // The demo's sin/cos table fills even and odd columns from one
    // dim/2-wide term; an odd width fails in Python as well.
    return absl::InvalidArgumentError(
        absl::StrCat("Transformer config: ninp ", c.ninp, " must be even"));
  }
  if (!(c.dropout >= 0.0 && c.dropout < 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("Transformer config: dropout ", c.dropout, " is not in [0, 1)"));
  }
  return absl::OkStatus();
}

int64_t TransformerParameterCount(const TransformerConfig& c) {
  const int64_t e = c.ninp, h = c.nhid, v = c.vocab_size;
  const int64_t attention = 3 * e * e + 3 * e + e * e + e;
  const int64_t feed_forward = e * h + h + h * e + e;
  const int64_t norm = 2 * e;
  const int64_t encoder_layer = attention + feed_forward + 2 * norm;
  const int64_t decoder_layer = 2 * attention + feed_forward + 3 * norm;
  return v * e                                          // embedding
         + c.nlayers * (encoder_layer + decoder_layer)  // layers
         + 2 * norm                                     // final norms
         + v * e + v;                                   // decoder head
}

// --- Building blocks --------------------------------------------------------

Linear::Linear(int64_t in_features, int64_t out_features, const at::TensorOptions& options) {
  weight = register_parameter("weight", at::empty({out_features, in_features}, options));
  bias = register_parameter("bias", at::empty({out_features}, options));
  ResetParameters();
}

void Linear::ResetParameters() {
  // kaiming_uniform_(a=sqrt(5)): gain sqrt(1/3), bound gain*sqrt(3/fan_in).
  const double bound = 1.0 / std::sqrt(static_cast<double>(weight.size(1)));
  Uniform(weight, bound);
  Uniform(bias, bound);
}

at::Tensor Linear::forward(const at::Tensor& x) { return at::linear(x, weight, bias); }

LayerNorm::LayerNorm(int64_t dim, const at::TensorOptions& options) {
  weight = register_parameter("weight", at::empty({dim}, options));
  bias = register_parameter("bias", at::empty({dim}, options));
  ResetParameters();
}

void LayerNorm::ResetParameters() {
  Fill(weight, 1.0);
  Fill(bias, 0.0);
}

at::Tensor LayerNorm::forward(const at::Tensor& x) {
  return at::layer_norm(x, {weight.size(0)}, weight, bias, 1e-5);
}

Embedding::Embedding(int64_t num_embeddings, int64_t dim, const at::TensorOptions& options) {
  weight = register_parameter("weight", at::empty({num_embeddings, dim}, options));
  ResetParameters();
}

void Embedding::ResetParameters() {
  at::NoGradGuard no_grad;
  weight.normal_(0.0, 1.0);
}

at::Tensor Embedding::forward(const at::Tensor& ids) { return at::embedding(weight, ids); }

at::Tensor Dropout::forward(const at::Tensor& x) { return at::dropout(x, p_, is_training()); }

MultiheadAttention::MultiheadAttention(int64_t embed_dim, int64_t num_heads, double dropout,
                                       const at::TensorOptions& options)
    : embed_dim_(embed_dim), num_heads_(num_heads), dropout_(dropout) {
  // Registration order is Python's: in_proj_weight, in_proj_bias, out_proj.
  in_proj_weight =
      register_parameter("in_proj_weight", at::empty({3 * embed_dim, embed_dim}, options));
  in_proj_bias = register_parameter("in_proj_bias", at::empty({3 * embed_dim}, options));
  out_proj = register_module("out_proj", std::make_shared<Linear>(embed_dim, embed_dim, options));
  ResetParameters();
}

void MultiheadAttention::ResetParameters() {
  XavierUniform(in_proj_weight);
  Fill(in_proj_bias, 0.0);
  out_proj->ResetParameters();
  Fill(out_proj->bias, 0.0);
}

at::Tensor MultiheadAttention::forward(const at::Tensor& query, const at::Tensor& key,
                                       const at::Tensor& value, bool causal) {
  const int64_t e = embed_dim_;
  at::Tensor q, k, v;
  if (query.is_same(key) && key.is_same(value)) {
    // Self-attention: one packed projection, as Python does.
    auto qkv = at::linear(query, in_proj_weight, in_proj_bias).chunk(3, -1);
    q = qkv[0];
    k = qkv[1];
    v = qkv[2];
  } else {
    q = at::linear(query, in_proj_weight.narrow(0, 0, e), in_proj_bias.narrow(0, 0, e));
    k = at::linear(key, in_proj_weight.narrow(0, e, e), in_proj_bias.narrow(0, e, e));
    v = at::linear(value, in_proj_weight.narrow(0, 2 * e, e), in_proj_bias.narrow(0, 2 * e, e));
  }
  const int64_t batch = query.size(0), tq = query.size(1), tk = key.size(1);
  const int64_t head_dim = e / num_heads_;
  // [B, T, E] -> [B, H, T, head_dim]
  q = q.reshape({batch, tq, num_heads_, head_dim}).transpose(1, 2);
  k = k.reshape({batch, tk, num_heads_, head_dim}).transpose(1, 2);
  v = v.reshape({batch, tk, num_heads_, head_dim}).transpose(1, 2);
  at::Tensor out = at::scaled_dot_product_attention(q, k, v, /*attn_mask=*/std::nullopt,
                                                    is_training() ? dropout_ : 0.0, causal);
  out = out.transpose(1, 2).reshape({batch, tq, e});
  return out_proj->forward(out);
}

TransformerEncoderLayer::TransformerEncoderLayer(const TransformerConfig& c,
                                                 const at::TensorOptions& options) {
  self_attn = register_module(
      "self_attn", std::make_shared<MultiheadAttention>(c.ninp, c.nhead, c.dropout, options));
  linear1 = register_module("linear1", std::make_shared<Linear>(c.ninp, c.nhid, options));
  dropout = register_module("dropout", std::make_shared<Dropout>(c.dropout));
  linear2 = register_module("linear2", std::make_shared<Linear>(c.nhid, c.ninp, options));
  norm1 = register_module("norm1", std::make_shared<LayerNorm>(c.ninp, options));
  norm2 = register_module("norm2", std::make_shared<LayerNorm>(c.ninp, options));
  dropout1 = register_module("dropout1", std::make_shared<Dropout>(c.dropout));
  dropout2 = register_module("dropout2", std::make_shared<Dropout>(c.dropout));
}

void TransformerEncoderLayer::ResetParameters() {
  self_attn->ResetParameters();
  linear1->ResetParameters();
  linear2->ResetParameters();
  norm1->ResetParameters();
  norm2->ResetParameters();
}

at::Tensor TransformerEncoderLayer::forward(const at::Tensor& src) {
  // Post-norm: x = norm1(x + sa(x)); x = norm2(x + ff(x)).
  at::Tensor x = norm1->forward(src + dropout1->forward(self_attn->forward(src, src, src, false)));
  at::Tensor ff = linear2->forward(dropout->forward(at::relu(linear1->forward(x))));
  return norm2->forward(x + dropout2->forward(ff));
}

TransformerDecoderLayer::TransformerDecoderLayer(const TransformerConfig& c,
                                                 const at::TensorOptions& options) {
  self_attn = register_module(
      "self_attn", std::make_shared<MultiheadAttention>(c.ninp, c.nhead, c.dropout, options));
  multihead_attn = register_module(
      "multihead_attn", std::make_shared<MultiheadAttention>(c.ninp, c.nhead, c.dropout, options));
  linear1 = register_module("linear1", std::make_shared<Linear>(c.ninp, c.nhid, options));
  dropout = register_module("dropout", std::make_shared<Dropout>(c.dropout));
  linear2 = register_module("linear2", std::make_shared<Linear>(c.nhid, c.ninp, options));
  norm1 = register_module("norm1", std::make_shared<LayerNorm>(c.ninp, options));
  norm2 = register_module("norm2", std::make_shared<LayerNorm>(c.ninp, options));
  norm3 = register_module("norm3", std::make_shared<LayerNorm>(c.ninp, options));
  dropout1 = register_module("dropout1", std::make_shared<Dropout>(c.dropout));
  dropout2 = register_module("dropout2", std::make_shared<Dropout>(c.dropout));
  dropout3 = register_module("dropout3", std::make_shared<Dropout>(c.dropout));
}

void TransformerDecoderLayer::ResetParameters() {
  self_attn->ResetParameters();
  multihead_attn->ResetParameters();
  linear1->ResetParameters();
  linear2->ResetParameters();
  norm1->ResetParameters();
  norm2->ResetParameters();
  norm3->ResetParameters();
}

at::Tensor TransformerDecoderLayer::forward(const at::Tensor& tgt, const at::Tensor& memory) {
  at::Tensor x = norm1->forward(tgt + dropout1->forward(self_attn->forward(tgt, tgt, tgt, true)));
  x = norm2->forward(x + dropout2->forward(multihead_attn->forward(x, memory, memory, false)));
  at::Tensor ff = linear2->forward(dropout->forward(at::relu(linear1->forward(x))));
  return norm3->forward(x + dropout3->forward(ff));
}

TransformerEncoder::TransformerEncoder(const TransformerConfig& c,
                                       const at::TensorOptions& options) {
  layers = register_module("layers", std::make_shared<LayerList<TransformerEncoderLayer>>());
  for (int64_t i = 0; i < c.nlayers; ++i) {
    layers->Append(std::make_shared<TransformerEncoderLayer>(c, options));
  }
  norm = register_module("norm", std::make_shared<LayerNorm>(c.ninp, options));
}

at::Tensor TransformerEncoder::forward(const at::Tensor& src) {
  at::Tensor x = src;
  for (const auto& layer : layers->layers()) x = layer->forward(x);
  return norm->forward(x);
}

TransformerDecoder::TransformerDecoder(const TransformerConfig& c,
                                       const at::TensorOptions& options) {
  layers = register_module("layers", std::make_shared<LayerList<TransformerDecoderLayer>>());
  for (int64_t i = 0; i < c.nlayers; ++i) {
    layers->Append(std::make_shared<TransformerDecoderLayer>(c, options));
  }
  norm = register_module("norm", std::make_shared<LayerNorm>(c.ninp, options));
}

at::Tensor TransformerDecoder::forward(const at::Tensor& tgt, const at::Tensor& memory) {
  at::Tensor x = tgt;
  for (const auto& layer : layers->layers()) x = layer->forward(x, memory);
  return norm->forward(x);
}

TransformerCore::TransformerCore(const TransformerConfig& c, const at::TensorOptions& options) {
  encoder = register_module("encoder", std::make_shared<TransformerEncoder>(c, options));
  decoder = register_module("decoder", std::make_shared<TransformerDecoder>(c, options));
  ResetParameters();
}

void TransformerCore::ResetParameters() {
  for (const auto& layer : encoder->layers->layers()) layer->ResetParameters();
  encoder->norm->ResetParameters();
  for (const auto& layer : decoder->layers->layers()) layer->ResetParameters();
  decoder->norm->ResetParameters();
  // nn.Transformer._reset_parameters: xavier_uniform_ on every matrix.
  for (auto& p : parameters()) {
    if (p.dim() > 1) XavierUniform(p);
  }
}

at::Tensor TransformerCore::forward(const at::Tensor& src, const at::Tensor& tgt) {
  return decoder->forward(tgt, encoder->forward(src));
}

PositionalEncoding::PositionalEncoding(int64_t dim, double dropout_p) : dim_(dim) {
  dropout = register_module("dropout", std::make_shared<Dropout>(dropout_p));
}

const at::Tensor& PositionalEncoding::Table(const c10::Device& device) {
  const std::string key = device.str();
  auto it = tables_.find(key);
  if (it != tables_.end()) return it->second;
  // The same op sequence, in float32, as the demo's _init_pos_encoding.
  at::NoGradGuard no_grad;
  const auto opts = at::TensorOptions().device(device).dtype(at::kFloat);
  at::Tensor pe = at::zeros({kPositionalEncodingMaxLen, dim_}, opts);
  at::Tensor position = at::arange(0, kPositionalEncodingMaxLen, opts).unsqueeze(1);
  at::Tensor div_term = at::exp(at::arange(0, dim_, 2, opts.dtype(at::kLong)).to(at::kFloat) *
                                (-std::log(10000.0) / static_cast<double>(dim_)));
  pe.slice(1, 0, dim_, 2).copy_(at::sin(position * div_term));
  pe.slice(1, 1, dim_, 2).copy_(at::cos(position * div_term));
  return tables_.emplace(key, std::move(pe)).first->second;
}

at::Tensor PositionalEncoding::forward(const at::Tensor& x) {
  const int64_t t = x.size(1);
  TORCH_CHECK(t < kPositionalEncodingMaxLen, "PositionalEncoding: sequence length ", t,
              " must be below ", kPositionalEncodingMaxLen);
  // pe[:, T] in the demo: one row, broadcast over every position. In x's
  // dtype, as the demo's table is when built under bf16-true (Lightning sets
  // the default dtype around forward); for float32 x nothing changes.
  at::Tensor row = Table(x.device()).narrow(0, t, 1);
  if (row.scalar_type() != x.scalar_type()) row = row.to(x.scalar_type());
  return dropout->forward(x + row);
}

Transformer::Transformer(const TransformerConfig& config, const at::TensorOptions& options)
    : config_(config) {
  const absl::Status valid = ValidateTransformerConfig(config);
  TORCH_CHECK(valid.ok(), std::string(valid.message()));
  pos_encoder = register_module("pos_encoder",
                                std::make_shared<PositionalEncoding>(config.ninp, config.dropout));
  embedding = register_module("embedding",
                              std::make_shared<Embedding>(config.vocab_size, config.ninp, options));
  transformer = register_module("transformer", std::make_shared<TransformerCore>(config, options));
  decoder =
      register_module("decoder", std::make_shared<Linear>(config.ninp, config.vocab_size, options));
}

void Transformer::ResetParameters() {
  embedding->ResetParameters();
  transformer->ResetParameters();
  decoder->ResetParameters();
}

at::Tensor Transformer::forward(const at::Tensor& inputs, const at::Tensor& target) {
  TORCH_CHECK(inputs.dim() == 2 && target.dim() == 2 && inputs.sizes() == target.sizes(),
              "Transformer: inputs and target must both be [batch, seq]; got ", inputs.sizes(),
              " and ", target.sizes());
  const double scale = std::sqrt(static_cast<double>(config_.ninp));
  at::Tensor src = pos_encoder->forward(embedding->forward(inputs) * scale);
  at::Tensor tgt = pos_encoder->forward(embedding->forward(target) * scale);
  at::Tensor out = decoder->forward(transformer->forward(src, tgt));
  return at::log_softmax(out, -1).view({-1, config_.vocab_size});
}

at::Tensor TransformerLoss(const at::Tensor& log_probs, const at::Tensor& target) {
  return at::nll_loss(log_probs, target.reshape({-1}));
}

}  // namespace fabric::trainers
