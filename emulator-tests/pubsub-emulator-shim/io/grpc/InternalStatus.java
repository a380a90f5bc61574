// Compatibility shim for Google's Pub/Sub emulator 0.8.20 (gcloud component `pubsub-emulator`).
//
// The emulator's jar bundles a grpc-core that calls
// `InternalStatus.asRuntimeException(Status, Metadata, boolean)` but a grpc-api whose
// `InternalStatus` lacks that method. Every time a client cancels a streaming pull (RST_STREAM,
// which is how every client library closes one) or its connection drops, the server's
// close listener throws NoSuchMethodError before it cancels the call, so the emulator never
// learns that the stream is gone: its pusher thread keeps leasing messages of the subscription
// to the dead stream every 50 ms. Those messages come back only when a lease lapses, and then
// the dead stream races the live one for them again. See docs/pubsub.md, "The emulator".
//
// emulator-tests/pubsub-emulator.sh compiles this class and puts it before the emulator's jar
// on the class path (same class loader, so same runtime package as io.grpc.Status). It is the
// grpc-api class with the missing method added; nothing else changes.
package io.grpc;

public final class InternalStatus {
  private InternalStatus() {}

  public static final Metadata.Key<String> MESSAGE_KEY = Status.MESSAGE_KEY;
  public static final Metadata.Key<Status> CODE_KEY = Status.CODE_KEY;

  public static StatusRuntimeException asRuntimeExceptionWithoutStacktrace(
      Status status, Metadata trailers) {
    return new StatusRuntimeException(status, trailers);
  }

  public static StatusRuntimeException asRuntimeException(
      Status status, Metadata trailers, boolean fillInStackTrace) {
    return new StatusRuntimeException(status, trailers);
  }
}
