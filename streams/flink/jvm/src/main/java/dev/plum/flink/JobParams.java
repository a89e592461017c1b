package dev.plum.flink;

import java.nio.charset.StandardCharsets;
import java.util.Base64;
import java.util.Map;
import org.apache.flink.table.functions.FunctionContext;

/**
 * The settings the jar's functions read: the global job parameter
 * {@value UserTimelineFunction#PARAMS_KEY}, base64 of a JSON object (streams/flink/job.py
 * operator_params), and its typed fields.
 */
final class JobParams {
  private JobParams() {}

  /** The job parameter's object; fails when the job did not set it. */
  @SuppressWarnings("unchecked")
  static Map<String, Object> read(FunctionContext context) throws PyJson.Error {
    String b64 = context.getJobParameter(UserTimelineFunction.PARAMS_KEY, null);
    if (b64 == null) {
      throw new IllegalStateException(
          "job parameter " + UserTimelineFunction.PARAMS_KEY + " is not set (streams/flink/job.py sets it)");
    }
    return (Map<String, Object>) PyJson.parse(new String(Base64.getDecoder().decode(b64), StandardCharsets.UTF_8));
  }

  /** {@code m[key]} as a number; fails naming the {@code what} param when absent or not one. */
  static Number number(Map<String, Object> m, String key, String what) {
    Object v = m.get(key);
    if (!(v instanceof Number)) {
      throw new IllegalArgumentException(what + " param " + key + " missing or not a number: " + v);
    }
    return (Number) v;
  }
}
